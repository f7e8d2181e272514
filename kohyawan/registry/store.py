"""The registry folder: where it is, its index, its lock, and atomic writes.

Every change happens inside ``Registry.transaction()``: take an exclusive ``fcntl.flock`` on ``.lock``
in the registry, re-read ``index.json``, change it, write it back atomically (temp file in the same
folder, fsync, ``os.replace``, fsync of the folder) and regenerate every model's ``training_notes.md``
from it, then release. Readers never lock: they only ever see a whole old or a whole new index.

Shared drives: flock is advisory and works between processes on one machine and on NFSv4 and SMB/CIFS
mounts that forward locks (Linux NFS client emulates flock with POSIX byte-range locks since 2.6.12).
It does NOT protect anything on NFSv3 mounted with ``nolock``, on sshfs, or on sync folders (Dropbox,
Drive); there concurrent exports may lose a version. ``registry verify`` finds the damage afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from kohyawan.errors import BadInput, ConfigError, WorkFailed
from kohyawan.files import atomic
from kohyawan.files.digest import sha256_file  # noqa: F401  (re-exported)

SCHEMA = 1
INDEX = "index.json"
PREVIOUS = "index.prev.json"  # the index before the last change: one step of undo for a damaged index
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
ENV_REGISTRY = "KOHYAWAN_REGISTRY"
PROJECT_FILE = "kohyawan.toml"


def lock_timeout() -> float:
    """Seconds a writer waits for the lock ($KOHYAWAN_LOCK_TIMEOUT, default 300)."""
    raw = os.environ.get("KOHYAWAN_LOCK_TIMEOUT", "300")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"KOHYAWAN_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
    return max(value, 0.0)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def current_user() -> str:
    user = os.environ.get("KOHYAWAN_USER")
    if user:
        return user
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid{os.getuid()}"


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some network file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def temp_path(folder: Path, name: str) -> Path:
    """A unique hidden temp name in ``folder``; ComfyUI and our own listings skip dot files."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}.", dir=folder)
    # mkstemp makes 0600 files; a shared registry needs the usual umask-based mode for teammates.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic.write_bytes(path, data, sync_dir=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic.write_text(path, text, sync_dir=True)


def _project_registry(cwd: Path) -> Path | None:
    """``registry`` in the ``[kohyawan]`` table of ./kohyawan.toml (the project settings table, whose keys
    ``profiles.project_settings`` validates); a relative path is relative to that file's folder."""
    project = cwd / PROJECT_FILE
    if not project.is_file():
        return None
    from kohyawan.files import toml

    try:
        data = toml.loads(project.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{project}: not valid TOML ({exc})") from None
    table = data.get("kohyawan")
    value = table.get("registry") if isinstance(table, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{project}: [kohyawan] registry must be a folder path (a string)")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (cwd / path)


def locate(option: str | os.PathLike | None, *, cwd: Path | None = None) -> Path:
    """Registry folder: --registry, else [kohyawan] registry in ./kohyawan.toml, else $KOHYAWAN_REGISTRY."""
    if option:
        return Path(option).expanduser().absolute()
    cwd = cwd or Path.cwd()
    found = _project_registry(cwd)
    if found is not None:
        return found.absolute()
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return Path(env).expanduser().absolute()
    raise BadInput(
        f"no registry given: pass --registry DIR, set registry = \"DIR\" under [kohyawan] in {PROJECT_FILE}, "
        f"or set {ENV_REGISTRY}"
    )


def empty_index() -> dict[str, Any]:
    return {"schema": SCHEMA, "models": {}}


class Registry:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> "Registry":
        reg = cls(root)
        if (reg.root / INDEX).is_file():
            return reg
        if not create:
            raise BadInput(
                f"no registry at {reg.root} (no {INDEX}): export a model there first, "
                f"or check --registry / {PROJECT_FILE} / {ENV_REGISTRY}"
            )
        if reg.root.exists() and not reg.root.is_dir():
            raise BadInput(f"registry path {reg.root} exists and is not a folder")
        reg.root.mkdir(parents=True, exist_ok=True)
        with reg.transaction():
            pass
        return reg

    # --- reading -------------------------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        path = self.root / INDEX
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return empty_index()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkFailed(f"{path} is damaged ({exc}); the previous state is in {self.root / PREVIOUS}: "
                             "check it and copy it over the index") from None
        schema = data.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA:
            raise ConfigError(f"{path} has schema {schema!r}; this kohyawan reads schema <= {SCHEMA}: upgrade it")
        data.setdefault("models", {})
        return data

    def path_of(self, rel: str) -> Path:
        """Registry-relative path (as stored in the index) -> absolute path, never outside the root."""
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise WorkFailed(f"index entry {rel!r} points outside the registry; the index was edited by hand?")
        return full

    # --- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            timeout = lock_timeout()
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise WorkFailed(f"cannot lock {self.root / LOCK}: {exc.strerror}") from None
                if time.monotonic() > deadline:
                    raise WorkFailed(
                        f"registry {self.root} stayed locked for {timeout:.0f} s by another process; "
                        "try again, or check for a hung kohyawan"
                    )
                if not told:
                    print(f"waiting for the registry lock at {self.root} ...", file=sys.stderr)
                    told = True
                time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Locked read-modify-write of the index; notes regenerated before the lock is released."""
        with self.lock():
            index = self.read_index()
            try:
                before = (self.root / INDEX).read_bytes()
            except FileNotFoundError:
                before = None
            yield index
            index["schema"] = SCHEMA
            from kohyawan import __version__

            index["written_by"] = f"kohyawan {__version__}"
            if before is not None:
                atomic_write_bytes(self.root / PREVIOUS, before)
            atomic_write_text(self.root / INDEX, json.dumps(index, indent=2, ensure_ascii=False) + "\n")
            try:
                self._write_notes(index)
            except OSError as exc:  # the index is written: a notes failure must not undo the change
                print(f"warning: could not write training notes: {exc}", file=sys.stderr)

    def _write_notes(self, index: dict[str, Any]) -> None:
        from kohyawan.registry import naming, notes

        for model in index["models"].values():
            rel = f"{naming.model_folder(model['kind'], model['client'])}/{naming.notes_file_name(model['kind'], model['name'])}"
            path = self.path_of(rel)
            text = notes.render(model)
            try:
                if path.read_text(encoding="utf-8") == text:
                    continue
            except (FileNotFoundError, UnicodeDecodeError):
                pass
            atomic_write_text(path, text)

    def notes_path(self, model: dict[str, Any]) -> Path:
        from kohyawan.registry import naming

        return self.root / naming.model_folder(model["kind"], model["client"]) / naming.notes_file_name(
            model["kind"], model["name"]
        )


def find_model(index: dict[str, Any], name: str, *, client: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """The one model called ``name`` (narrowed by client/kind), or BadInput naming the candidates."""
    matches = [
        m
        for m in index["models"].values()
        if m["name"] == name and (client is None or m["client"] == client) and (kind is None or m["kind"] == kind)
    ]
    if not matches:
        known = sorted({m["name"] for m in index["models"].values()})
        hint = f"; known models: {', '.join(known)}" if known else "; the registry is empty"
        where = "".join(f" {k}={v}" for k, v in (("client", client), ("kind", kind)) if v)
        raise BadInput(f"no model {name!r}{where} in the registry{hint}")
    if len(matches) > 1:
        keys = ", ".join(sorted(f"{m['kind']}/{m['client']}/{m['name']}" for m in matches))
        raise BadInput(f"{name!r} is ambiguous ({keys}): add --client or --kind")
    return matches[0]


def find_version(model: dict[str, Any], version: str | int) -> dict[str, Any]:
    from kohyawan.registry import naming

    if str(version) == "current":
        for v in model["versions"]:
            if v["status"] == "current":
                return v
        raise BadInput(f"{model['name']} has no current version: give a version (e.g. v1) or promote one")
    if str(version) == "latest":
        return model["versions"][-1]
    n = naming.parse_version(version)
    for v in model["versions"]:
        if v["version"] == n:
            return v
    have = ", ".join(f"v{v['version']}" for v in model["versions"])
    raise BadInput(f"{model['name']} has no version v{n} (versions: {have})")
