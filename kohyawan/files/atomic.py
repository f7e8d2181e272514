"""Atomic file writes: a temporary name in the same folder, fsync, rename. A reader (or a crash) never
sees a half-written file under the final name. Every module that writes a file a person or a program
relies on (configs, ledgers, reports, manifests, workflows, LoRA files) writes it through here; see
docs/architecture.md for the design."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def replacing(path: Path, *, mode: int | None = None, prefix: str | None = None,
              sync_dir: bool = False) -> Iterator[BinaryIO]:
    """An open binary file that becomes ``path`` when the block ends without an exception.

    The data is written to a hidden temporary name in the same folder, fsynced, given the mode a plain
    ``open()`` would give (``mkstemp`` makes 0600 files), then renamed over ``path``. On any exception
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:  # make the rename itself durable (the registry's index on a shared drive)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes(path: Path, data: bytes, *, mode: int | None = None, prefix: str | None = None,
                sync_dir: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, mode=mode, prefix=prefix, sync_dir=sync_dir) as handle:
        handle.write(data)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str, *, mode: int | None = None, prefix: str | None = None,
               sync_dir: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode, prefix=prefix, sync_dir=sync_dir)
