"""The production model store: exported LoRAs, their versions, status, notes and ComfyUI deployments.

Layout of a registry folder (usable on a shared drive, see ``store`` for the locking caveats)::

    index.json                      the truth: every model, version, file (sha256), status, deployment
    .lock                           flock target; every write happens while holding it
    roles.toml                      optional: who may export, deploy, promote (``roles``)
    <kind>s/<client>/wan2.2_<kind>_<name>_v<N>_<YYYYMMDD>.safetensors
    <kind>s/<client>/wan2.2_<kind>_<name>_training_notes.md   regenerated from the index on every change

Modules: ``naming`` (pure names), ``store`` (folder, index, lock), ``versions`` (pure status changes),
``notes`` (pure markdown), ``roles``, ``lorafile`` (metadata/dtype rewrite), ``sources`` (run folders and
checkpoints), ``export``, ``deploy``, ``verify``, ``lora_check`` (adapter to ``kohyawan.lora``).
"""
