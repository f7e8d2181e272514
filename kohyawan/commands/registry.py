"""``kohyawan export`` and ``kohyawan registry ...``: thin click skins over ``kohyawan.registry``."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from kohyawan.console import err, out, print_json, warn
from kohyawan.errors import BadInput, WorkFailed
from kohyawan.registry.naming import KINDS


def _registry_option(f):
    return click.option("--registry", "registry_dir", type=click.Path(file_okay=False), default=None,
                        help="Registry folder (else [kohyawan] registry in ./kohyawan.toml, else $KOHYAWAN_REGISTRY).")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def _which_options(f):
    f = click.option("--kind", type=click.Choice(KINDS), default=None, help="Narrow NAME to this kind.")(f)
    return click.option("--client", default=None, help="Narrow NAME to this client.")(f)


def _io_errors(f):
    """A file-system failure (disk full, permission denied, a vanished mount) is one line and exit 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise WorkFailed(f"{where}{exc.strerror or exc}") from None

    return wrapper


def _model_options(f):
    """--client/--kind to narrow NAME, --registry, --json, and file-system errors as one line."""
    return _which_options(_registry_option(_json_option(_io_errors(f))))


def _open(registry_dir):
    from kohyawan.registry import store

    return store.Registry.open(store.locate(registry_dir))


def _size(n):
    from kohyawan.registry.notes import _size as size

    return size(n)


# ---------------------------------------------------------------------------------------------- export
@click.command("export")
@click.argument("run")
@click.option("--name", required=True, help="Model name: letters, digits, hyphens (e.g. sarah).")
@click.option("--kind", required=True, type=click.Choice(KINDS), help="What the LoRA teaches.")
@click.option("--client", default=None, help="Client folder (default: 'default').")
@click.option("--checkpoint", default="auto", show_default=True,
              help="STEP, 'final', or 'auto' (nearest 70 % among checkpoints at 60-80 % of training, else final).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Convert tensors (default: keep the checkpoint's dtype).")
@click.option("--notes", default=None, help="A note for this version (goes into training_notes.md and the file).")
@click.option("--score", "scores", multiple=True, metavar="KEY=VALUE", help="A test result; repeatable.")
@click.option("--task", default=None, help="musubi task (t2v-A14B, i2v-A14B, ...) when the source does not record it.")
@click.option("--expert", type=click.Choice(["both", "high", "low"]), default=None,
              help="Which expert the source trained, when it does not say; or one half of a high/low pair.")
@_registry_option
@_json_option
@_io_errors
def export(run, name, kind, client, checkpoint, dtype, notes, scores, task, expert, registry_dir, as_json):
    """Publish a checkpoint of RUN as the next version of a model in the registry.

    RUN is a kohyawan run folder (or its id under ./runs), a plain musubi-tuner output folder, or one
    .safetensors file (then the task comes from its kohyawan metadata or --task). The file is checked to
    load on the task's model with no ignored keys, stamped with kohyawan metadata, and stored as
    <kind>s/<client>/wan2.2_<kind>_<name>_v<N>_<YYYYMMDD>.safetensors with status 'testing'
    (per-expert runs give a ..._<name>_high_v<N>_... / ..._low_... pair under one version).

    \b
    Example:
      kohyawan export runs/20261128-sarah --name sarah --kind character --client brand-x \\
          --checkpoint auto --dtype bf16 --registry /mnt/team/loras --score likeness=8
    """
    from kohyawan.registry import export as ex, store, versions

    req = ex.ExportRequest(source=run, name=name, kind=kind, client=client, checkpoint=checkpoint, dtype=dtype,
                           notes=notes, scores=versions.parse_scores(scores), task=task,
                           expert=expert)
    result = ex.export(store.locate(registry_dir), req, warn=warn)
    if as_json:
        print_json(result)
        return
    con = out()
    con.print(f"exported {result['model']} v{result['version']} ({result['status']}, task {result['task']})")
    for f in result["files"]:
        con.print(f"  {f['abs_path']}")
        con.print(f"    expert {f['expert']}, {f['dtype']}, {_size(f['bytes'])}, sha256 {f['sha256'][:16]}; "
                  f"from {Path(f['checkpoint']).name} ({f['why']})")
    con.print(f"  notes: {result['notes_file']}")


# -------------------------------------------------------------------------------------------- registry
@click.group("registry")
def registry():
    """The production model store: versions, status, notes, verification and ComfyUI deployment.

    \b
    Example:
      kohyawan registry list --registry /mnt/team/loras
      kohyawan registry promote sarah v3 --client brand-x
    """


@registry.command("list")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="List only the models of this kind.")
@click.option("--client", default=None, help="List only this client's models.")
@_registry_option
@_json_option
@_io_errors
def list_cmd(kind, client, registry_dir, as_json):
    """List the models in the registry with their current and latest versions.

    \b
    Example:
      kohyawan registry list --kind character --json
    """
    from kohyawan.console import print_table
    from kohyawan.registry.actions import list_models

    reg = _open(registry_dir)
    rows = list_models(reg.read_index(), kind=kind, client=client)
    if as_json:
        print_json({"registry": str(reg.root), "models": rows})
        return
    if not rows:
        err().print(f"no models in {reg.root}")
        return
    print_table(["name", "kind", "client", "versions", "current", "latest", "deployed"],
                [[r["name"], r["kind"], r["client"], str(r["versions"]), f"v{r['current']}" if r["current"] else "-",
                  f"v{r['latest']} {r['latest_status']} {r['latest_date'][:10]}", str(r["deployments"])]
                 for r in rows])


@registry.command("show")
@click.argument("name")
@_model_options
def show(name, client, kind, registry_dir, as_json):
    """Show every version of one model: status, date, files, source, scores.

    \b
    Example:
      kohyawan registry show sarah --client brand-x
    """
    from kohyawan.console import Col, print_table
    from kohyawan.registry import store

    reg = _open(registry_dir)
    m = store.find_model(reg.read_index(), name, client=client, kind=kind)
    if as_json:
        print_json({"registry": str(reg.root), "model": f"{m['kind']}/{m['client']}/{m['name']}",
                    "notes_file": str(reg.notes_path(m)), **m})
        return
    con = out()
    con.print(f"{m['kind']}/{m['client']}/{m['name']}  (notes: {reg.notes_path(m)})", markup=False)
    rows = []
    for v in reversed(m["versions"]):
        src = v.get("source") or {}
        files = "\n".join(Path(f["path"]).name for f in v.get("files", []))
        scores = ", ".join(f"{k}={val}" for k, val in sorted((v.get("scores") or {}).items())) or "-"
        rows.append([f"v{v['version']}", v["status"], v["created"][:10], v.get("task") or "?",
                     str(src.get("step") if src.get("step") is not None else "?"), files, scores])
    # the file name answers "where is my file": never cut (below the table when the terminal is narrow)
    print_table(["version", "status", "date", "task", "step", Col("files", keep=True), "scores"], rows, console=con)
    for d in m.get("deployments", []):
        con.print(f"deployed v{d['version']}: {d['file']}", markup=False)


def _status_change_options(f):
    """What ``promote`` and ``deprecate`` take: NAME VERSION --reason, then the model options."""
    f = click.option("--reason", default=None, help="Why (recorded in the notes).")(_model_options(f))
    return click.argument("name")(click.argument("version")(f))


def _change_status(action, name, version, reason, client, kind, registry_dir, as_json, force=False):
    """promote / deprecate: the same shape, one pure function from ``versions`` each."""
    from kohyawan.registry import actions, store

    result = actions.change_status(store.locate(registry_dir), action, name, version, reason=reason, client=client,
                                   kind=kind, force=force)
    result.pop("user")
    key, cur = result["model"], result["current"]
    if result.get("rehearsal"):
        warn(f"{key} v{result['version']} comes from a rehearsal run: no training happened, and it is current now")
    if as_json:
        print_json(result)
    else:
        out().print(actions.status_line(result))
    if action == "deprecate" and cur is None:
        warn(f"{key} has no current version now")


def _status_command(action: str, doc: str):
    """``registry ACTION NAME VERSION``: promote and deprecate differ only in the action and the help."""

    def command(name, version, reason, client, kind, registry_dir, as_json, force=False):
        _change_status(action, name, version, reason, client, kind, registry_dir, as_json, force)

    command.__name__, command.__doc__ = action, doc
    command = _status_change_options(command)
    if action == "promote":
        command = click.option("--force", is_flag=True,
                               help="Promote a version that comes from a rehearsal run (no training happened).")(command)
    return registry.command(action)(command)


promote = _status_command("promote", """Make VERSION the current (production) version; the previous current one becomes deprecated.

    A version exported from a rehearsal run (kohyawan's simulated trainer) is refused without --force.

    \b
    Example:
      kohyawan registry promote sarah v3 --reason "passed the phase 3 tests"
    """)

deprecate = _status_command("deprecate", """Mark VERSION deprecated (its files stay in the registry and in the index).

    \b
    Example:
      kohyawan registry deprecate sarah v1 --reason "identity drift at strength 1.0"
    """)


@registry.command("rollback")
@click.argument("name")
@click.option("--reason", required=True, help="What is wrong with the current version (recorded).")
@_model_options
def rollback(name, reason, client, kind, registry_dir, as_json):
    """Make the previous good version current again; the current one is deprecated and marked rolled back.

    \b
    Example:
      kohyawan registry rollback sarah --reason "faces melt above strength 0.8"
    """
    from kohyawan.registry import actions, store

    result = actions.rollback(store.locate(registry_dir), name, reason=reason, client=client, kind=kind)
    result.pop("user")
    if as_json:
        print_json(result)
    else:
        out().print(actions.status_line(result))


@registry.command("verify")
@click.argument("name", required=False)
@click.option("--quick", is_flag=True, help="Check presence and size only, without hashing.")
@_model_options
def verify_cmd(name, quick, client, kind, registry_dir, as_json):
    """Check that every recorded file exists with its sha256; exit 1 when one is missing or corrupted.

    \b
    Example:
      kohyawan registry verify --registry /mnt/team/loras
    """
    from kohyawan.registry.verify import verify

    result = verify(_open(registry_dir), name=name, client=client, kind=kind, quick=quick)
    if as_json:
        print_json(result)
    else:
        con = out()
        for p in result["problems"]:
            con.print(f"PROBLEM {p['file']}: {p['problem']}")
        for s in result["untracked"]:
            con.print(f"note    {s['file']}: {s['what']}")
        how = "sha256" if result["hashed"] else "presence and size only"
        con.print(f"{result['checked']} file(s) checked ({how}), {len(result['problems'])} problem(s)")
    if not result["ok"]:
        raise WorkFailed(f"registry verify found {len(result['problems'])} problem(s)")


@registry.command("notes")
@click.argument("name")
@click.option("--add", "text", default=None, help="Append a note (to the model, or to --version).")
@click.option("--version", "version", default=None, help="The version a note or score belongs to.")
@click.option("--score", "scores", multiple=True, metavar="KEY=VALUE", help="Record a test result for --version.")
@_model_options
def notes_cmd(name, text, version, scores, client, kind, registry_dir, as_json):
    """Print a model's training_notes.md, or add a note or test results to it.

    \b
    Example:
      kohyawan registry notes sarah --version v3 --score likeness=8.5 --add "holds identity at 0.9"
    """
    from kohyawan.registry import naming, roles, store, versions

    reg = _open(registry_dir)
    if version and text is None and not scores:
        raise BadInput("--version goes with --add or --score (the notes file always shows every version)")
    if text is not None or scores:
        user = store.current_user()
        roles.check(reg.root, "annotate", user)
        n = naming.parse_version(version) if version else None
        if scores and n is None:
            raise BadInput("--score needs --version (test results belong to one version)")
        with reg.transaction() as index:
            m = store.find_model(index, name, client=client, kind=kind)
            key = f"{m['kind']}/{m['client']}/{m['name']}"
            at = store.now_iso()
            if scores:
                m = versions.add_scores(m, n, versions.parse_scores(scores), at=at, user=user)
            if text is not None:
                m = versions.add_note(m, n, text, at=at, user=user)
            index["models"][key] = m
    m = store.find_model(reg.read_index(), name, client=client, kind=kind)
    path = reg.notes_path(m)
    if as_json:
        print_json({"model": f"{m['kind']}/{m['client']}/{m['name']}", "notes_file": str(path),
                    "text": path.read_text(encoding="utf-8")})
    else:
        out().print(path.read_text(encoding="utf-8"), markup=False, end="")


@registry.command("deploy")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--comfyui", "comfy_dir", required=True, type=click.Path(), help="The ComfyUI folder (has models/loras).")
@click.option("--undeploy", is_flag=True, help="Remove what kohyawan deployed (all versions unless VERSION).")
@_model_options
def deploy_cmd(name, version, comfy_dir, undeploy, client, kind, registry_dir, as_json):
    """Copy a version (default: current) into ComfyUI's models/loras/kohyawan/<kind>/, or take it out.

    \b
    Example:
      kohyawan registry deploy sarah current --comfyui ~/ComfyUI --client brand-x
      kohyawan registry deploy sarah v2 --comfyui ~/ComfyUI --undeploy
    """
    from kohyawan.registry import deploy, store

    root = store.locate(registry_dir)
    if undeploy:
        result = deploy.undeploy(root, name, version, comfy_dir, client=client, kind=kind)
    else:
        result = deploy.deploy(root, name, version or "current", comfy_dir, client=client, kind=kind)
    if as_json:
        print_json(result)
    else:
        con = out()
        head = f"{result['model']}" + (f" v{result['version']}" if "version" in result else "")
        con.print(f"{head} -> {result['comfyui']}")
        for f in result["files"]:
            con.print(f"  {f['action']}: {f['file']}")
        if result.get("lora_names"):
            con.print("  LoraLoaderModelOnly lora_name: " + ", ".join(result["lora_names"]))
    if result.get("refused"):
        raise WorkFailed(f"{len(result['refused'])} file(s) changed since deployment were left in place")
