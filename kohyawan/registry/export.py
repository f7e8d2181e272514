"""Export: choose a checkpoint, check it would load in ComfyUI, stamp kohyawan metadata, publish a version.

The heavy part (metadata rewrite or dtype conversion, hashed while written) writes hidden temp files in
the model's folder without holding the registry lock; only numbering the version, renaming the files into place and
writing the index happen under the lock, so several exports at once each get their own version quickly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from kohyawan import __version__
from kohyawan.errors import BadInput, ModelFileError, WorkFailed
from kohyawan.lora import metadata as lora_metadata
from kohyawan.registry import lora_check, lorafile, naming, roles, sources, store, versions


@dataclass
class ExportRequest:
    source: str
    name: str
    kind: str
    client: str | None = None
    checkpoint: str = "auto"
    dtype: str | None = None          # None: keep the checkpoint's dtype
    notes: str | None = None
    scores: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    expert: str | None = None         # override: relabel a one-expert source, or pick one half of a pair


def _apply_expert(src: sources.Source, expert: str | None) -> None:
    if expert is None:
        return
    if expert not in naming.EXPERTS:
        raise BadInput(f"--expert {expert!r}: choose one of {', '.join(naming.EXPERTS)}")
    experts = src.experts()
    if len(experts) == 1:
        src.checkpoints = [replace(c, expert=expert) for c in src.checkpoints]
    elif expert in experts:
        src.checkpoints = [c for c in src.checkpoints if c.expert == expert]
    else:
        raise BadInput(f"--expert {expert}: {src.origin} holds {', '.join(experts)} files; pick one of those")


def _plan_files(src: sources.Source, how: str) -> list[tuple[str, sources.Checkpoint, str]]:
    experts = src.experts()
    if "both" in experts and len(experts) > 1:
        raise BadInput(
            f"{src.origin}: holds both a two-expert LoRA and per-expert files ({', '.join(experts)}); "
            "export one file by path"
        )
    picked = []
    for expert in experts:
        cks = [c for c in src.checkpoints if c.expert == expert]
        ck, why = sources.choose(cks, how, src.total_steps)
        picked.append((expert, ck, why))
    return picked


def _metadata(req, settings, task, expert, ck, src, key) -> dict[str, str]:
    ds = settings["dataset"]
    meta = {
        lora_check.META_VERSION: __version__,
        lora_check.META_TASK: task,
        lora_check.META_EXPERT: expert,
        lora_check.META_PROFILE: settings.get("profile"),
        lora_check.META_RUN_ID: src.run_id,
        lora_check.META_DATASET_HASH: ds.get("hash"),
        lora_check.META_DATASET_SIZE: ds.get("size"),
        lora_check.META_REHEARSAL: None if ds.get("rehearsal") is None else str(bool(ds["rehearsal"])).lower(),
        lora_check.META_NOTES: req.notes,
        lora_check.META_HYPERPARAMETERS: json.dumps(settings["hyperparameters"], sort_keys=True, default=str),
        lora_check.META_NAME: key,
        lora_check.META_STEP: ck.step,
    }
    return {k: str(v) for k, v in meta.items() if v is not None}


def _run_metadata(src: sources.Source, ck: sources.Checkpoint) -> dict[str, str]:
    """For a checkpoint of a kohyawan run: the whole run's absolute ss_* values (a resumed run's files
    describe their last attempt only), from the run's ledger; nothing for other sources."""
    entry = next((c for c in src.run.get("checkpoints") or []
                  if isinstance(c, dict) and Path(str(c.get("path"))).name == ck.path.name), None)
    if src.kind != "run" or entry is None:
        return {}
    return lora_metadata.absolute_training(src.run, {**entry, "step": ck.step}, lorafile.metadata_of(ck.path))


def export(root: Path, req: ExportRequest, *, user: str | None = None, today: date | None = None,
           warn=lambda msg: None) -> dict[str, Any]:
    kind = naming.check_kind(req.kind)
    name = naming.check_slug(req.name, "name")
    client = naming.check_slug(req.client, "client") if req.client is not None else naming.DEFAULT_CLIENT
    if req.dtype is not None and req.dtype not in lorafile.DTYPES:
        raise BadInput(f"--dtype {req.dtype!r}: choose one of {', '.join(lorafile.DTYPES)}")
    user = user or store.current_user()
    roles.check(root, "export", user)
    src = sources.load(sources.resolve(req.source))
    _apply_expert(src, req.expert)
    picked = _plan_files(src, req.checkpoint)

    first_meta = lorafile.metadata_of(picked[0][1].path)
    settings = sources.settings(src, first_meta)
    task = req.task or settings["task"]
    if not task:
        raise BadInput(
            f"{src.origin}: the task is not recorded (no run.json/plan.json, no kohyawan.task metadata): "
            "pass --task, e.g. --task t2v-A14B"
        )
    if req.task and settings["task"] and req.task != settings["task"]:
        raise BadInput(f"--task {req.task} contradicts the run, which trained {settings['task']}")
    if src.run.get("status") not in (None, "succeeded"):
        warn(f"run {src.run_id} has status {src.run.get('status')!r}; exporting a checkpoint it saved")
    if settings["dataset"].get("rehearsal"):
        warn("this checkpoint comes from a rehearsal run")
    for expert, ck, why in picked:
        verdict = lora_check.verify(ck.path, task)
        if not verdict.ok:
            raise ModelFileError(f"{ck.path.name} would not load cleanly on {task}: " + "; ".join(verdict.problems[:5]))

    key = naming.model_key(kind, client, name)
    folder_rel = naming.model_folder(kind, client)
    reg = store.Registry.open(root, create=True)
    folder = reg.root / folder_rel
    folder.mkdir(parents=True, exist_ok=True)
    prepared, temps = [], []
    try:
        for expert, ck, why in picked:
            tmp = store.temp_path(folder, f"export-{expert}.safetensors")
            temps.append(tmp)
            meta = {**_metadata(req, settings, task, expert, ck, src, key), **_run_metadata(src, ck)}
            if req.dtype:
                written = lorafile.convert(ck.path, tmp, req.dtype, meta)
            else:
                written = lorafile.rewrite_metadata(ck.path, tmp, meta)
            verdict = lora_check.verify(tmp, task)
            if not verdict.ok:
                raise WorkFailed(f"the exported copy of {ck.path.name} fails verification: {'; '.join(verdict.problems[:3])}")
            counts = lorafile.tensor_dtypes(tmp)
            prepared.append({
                "expert": expert, "tmp": tmp, "sha256": written.sha256, "bytes": written.bytes,
                "dtype": lorafile.dtype_name(max(counts, key=counts.get)) if counts else None,
                "checkpoint": str(ck.path), "step": ck.step, "why": why,
            })
        return _publish(reg, req, key, kind, client, name, folder_rel, prepared, src, settings, task, user, today)
    finally:
        for tmp in temps:  # renamed into place on success; on any failure nothing half-written stays
            tmp.unlink(missing_ok=True)


def _publish(reg, req, key, kind, client, name, folder_rel, prepared, src, settings, task, user, today):
    at = store.now_iso()
    day = today or datetime.now(timezone.utc).date()  # the same day as the index's UTC timestamps
    record = {
        "task": task,
        "profile": settings.get("profile"),
        "variant": settings.get("variant"),
        "expert": "+".join(p["expert"] for p in prepared) if len(prepared) > 1 else prepared[0]["expert"],
        "source": {
            "origin": str(src.origin), "kind": src.kind, "run_id": src.run_id, "choice": req.checkpoint,
            "step": prepared[0]["step"], "total_steps": src.total_steps,
            "checkpoints": [{"expert": p["expert"], "path": p["checkpoint"], "step": p["step"], "why": p["why"]}
                            for p in prepared],
        },
        "dataset": settings["dataset"],
        "hyperparameters": settings["hyperparameters"],
        "scores": dict(req.scores),
        "notes": [{"at": at, "user": user, "text": req.notes}] if req.notes else [],
    }
    moved: list[Path] = []
    try:
        with reg.transaction() as index:
            model = index["models"].get(key) or {
                "kind": kind, "client": client, "name": name, "created": at, "notes": [], "versions": [],
                "events": [], "deployments": [],
            }
            model, n = versions.add_version(model, record, at=at, user=user)
            files = []
            for p in prepared:
                rel = f"{folder_rel}/{naming.lora_file_name(kind, name, n, day, p['expert'])}"
                final = reg.root / rel
                if final.exists():
                    raise WorkFailed(f"{final} exists but the index does not know it (left by a crash?); "
                                     "run 'kohyawan registry verify' and move it away")
                os.replace(p["tmp"], final)
                moved.append(final)
                files.append({"path": rel, "expert": p["expert"], "sha256": p["sha256"], "bytes": p["bytes"],
                              "dtype": p["dtype"]})
            store.fsync_dir(reg.root / folder_rel)
            model["versions"][-1]["files"] = files
            index["models"][key] = model
    except BaseException:
        # the index was not written: files already renamed into place would be orphans
        for f in moved:
            f.unlink(missing_ok=True)
        raise
    return {
        "registry": str(reg.root), "model": key, "name": name, "kind": kind, "client": client, "version": n,
        "status": "testing", "task": task,
        "files": [{**f, "abs_path": str(reg.root / f["path"]),
                   "checkpoint": p["checkpoint"], "step": p["step"], "why": p["why"]}
                  for f, p in zip(files, prepared)],
        "notes_file": str(reg.notes_path(model)),
    }
