"""Deploying registry versions into a ComfyUI installation, and taking them out again.

Files go to ``<ComfyUI>/models/loras/kohyawan/<kind>/`` under their versioned registry name. ComfyUI
caches loaded LoRA tensors by path, so a file of the same name is never overwritten: identical content is
a no-op, different content is refused. The copy is written to a hidden temp name, its sha256 (computed
from the bytes as they are copied) checked against the index, then hard-linked into place (an atomic
"create only if absent"; a plain rename is used where the file system has no hard links). Every
deployment is recorded in the index, and ``undeploy`` removes only recorded files whose sha256 still
matches. See docs/architecture.md.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from kohyawan.errors import BadInput, WorkFailed
from kohyawan.files import stream
from kohyawan.registry import roles, store

SUBDIR = ("models", "loras", "kohyawan")


def comfy_root(path: str | os.PathLike) -> Path:
    root = Path(path).expanduser().absolute()
    if not (root / "models" / "loras").is_dir():
        raise BadInput(f"{root} does not look like a ComfyUI folder (no models/loras inside it)")
    return root.resolve()


def _place(tmp: Path, dest: Path) -> None:
    try:
        os.link(tmp, dest)  # fails with EEXIST instead of replacing a file someone put there meanwhile
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if dest.exists():
            raise FileExistsError(dest) from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def deploy(root: Path, name: str, version: str, comfy: str | os.PathLike, *, client=None, kind=None,
           user: str | None = None) -> dict[str, Any]:
    user = user or store.current_user()
    croot = comfy_root(comfy)
    reg = store.Registry.open(root)
    roles.check(reg.root, "deploy", user)
    model = store.find_model(reg.read_index(), name, client=client, kind=kind)
    v = store.find_version(model, version)
    target = croot.joinpath(*SUBDIR, model["kind"])
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for f in v["files"]:
        src = reg.path_of(f["path"])
        dest = target / Path(f["path"]).name
        if dest.exists():
            if store.sha256_file(dest) == f["sha256"]:
                done.append({"file": str(dest), "sha256": f["sha256"], "action": "already there"})
                continue
            raise WorkFailed(f"{dest} exists with different content; not overwriting it (ComfyUI caches LoRAs "
                             "by path): move it away or deploy another version")
        if not src.is_file():
            raise WorkFailed(f"{src} is missing from the registry; run 'kohyawan registry verify'")
        tmp = store.temp_path(target, dest.name)
        try:
            got = stream.copy_file(src, tmp, atomic=False).sha256  # hashed as copied: one read
            if got != f["sha256"]:
                raise WorkFailed(f"copy of {src.name} has sha256 {got[:16]}, the index says {f['sha256'][:16]}: "
                                 "the registry copy is damaged (run 'kohyawan registry verify'); nothing deployed")
            _place(tmp, dest)
        except FileExistsError:
            raise WorkFailed(f"{dest} appeared while copying; not overwriting it") from None
        finally:
            tmp.unlink(missing_ok=True)
        store.fsync_dir(target)
        done.append({"file": str(dest), "sha256": f["sha256"], "action": "copied"})
    at = store.now_iso()
    with reg.transaction() as index:
        m = index["models"][f"{model['kind']}/{model['client']}/{model['name']}"]
        deps = m.setdefault("deployments", [])
        for d in done:
            if not any(x["file"] == d["file"] and x["comfyui"] == str(croot) for x in deps):
                deps.append({"comfyui": str(croot), "file": d["file"], "version": v["version"],
                             "sha256": d["sha256"], "at": at, "user": user})
    return {"model": f"{model['kind']}/{model['client']}/{model['name']}", "version": v["version"],
            "status": v["status"], "comfyui": str(croot), "files": done,
            "lora_names": [str(Path(d["file"]).relative_to(croot / "models" / "loras")) for d in done]}


def undeploy(root: Path, name: str, version: str | None, comfy: str | os.PathLike, *, client=None, kind=None,
             user: str | None = None) -> dict[str, Any]:
    """Remove this model's recorded deployments (one version, or all when version is None) from one ComfyUI."""
    user = user or store.current_user()
    croot = comfy_root(comfy)
    reg = store.Registry.open(root)
    roles.check(reg.root, "undeploy", user)
    index = reg.read_index()
    model = store.find_model(index, name, client=client, kind=kind)
    n = None if version is None else store.find_version(model, version)["version"]
    key = f"{model['kind']}/{model['client']}/{model['name']}"
    results = []
    with reg.transaction() as index:
        m = index["models"][key]
        keep = []
        for d in m.get("deployments", []):
            if d["comfyui"] != str(croot) or (n is not None and d["version"] != n):
                keep.append(d)
                continue
            path = Path(d["file"])
            if not path.exists():
                results.append({"file": d["file"], "version": d["version"], "action": "already gone"})
            elif store.sha256_file(path) != d["sha256"]:
                keep.append(d)
                results.append({"file": d["file"], "version": d["version"],
                                "action": "left in place: changed since it was deployed"})
            else:
                path.unlink()
                results.append({"file": d["file"], "version": d["version"], "action": "removed"})
        m["deployments"] = keep
    if not results:
        what = f"v{n}" if n is not None else "any version"
        raise BadInput(f"{key}: kohyawan deployed {what} nowhere in {croot}; nothing to undeploy")
    return {"model": key, "comfyui": str(croot), "files": results,
            "refused": [r for r in results if r["action"].startswith("left")]}
