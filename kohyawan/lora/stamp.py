"""A run's LoRA files told the whole run's story: the absolute ``ss_*`` values of
``metadata.absolute_training`` written into the file, the trainer's originals kept beside them.

The file is rewritten with its tensor bytes copied as they are (``kohyawan.files.stream``) under a
temporary name and renamed over itself, so a crash leaves the old file; in a kohyawan run folder the
checkpoint is a hard link to the trainer's output, which keeps the trainer's own header. The ledger
entry's size and sha256 are updated from the bytes written. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kohyawan.files.stream import copy_with_metadata
from kohyawan.lora import metadata as M
from kohyawan.lora.io import read_header


def stamp_run_checkpoint(ledger: dict[str, Any], path: str | Path) -> dict[str, str]:
    """Give the checkpoint the ledger lists at ``path`` the run's absolute metadata (the ledger dict's
    entry is updated, not saved; a file the ledger does not list is left alone). Returns the file's
    metadata as it now is."""
    entry = next((c for c in ledger.get("checkpoints") or [] if c.get("path") == str(path)), None)
    header = read_header(path)
    updates = M.absolute_training(ledger, entry, header.metadata) if entry else {}
    if not updates:
        return dict(header.metadata)
    meta = {**header.metadata, **updates}
    written = copy_with_metadata(header, Path(path), meta)
    entry.update(bytes=written.bytes, sha256=written.sha256)
    return meta
