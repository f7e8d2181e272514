"""kohyawan's facts in the metadata musubi-tuner itself writes (see docs/architecture.md, "Planning").

musubi-tuner records neither the task nor the expert in a LoRA file, but it writes its
``--training_comment`` option, as ``ss_training_comment``, into every checkpoint it saves.
kohyawan's training comment names them (``kohyawan VERSION; task=T; expert=E; profile=P[; variant=V]``,
after the user's own comment when there is one) and ``facts`` reads them back from a file's metadata.
"""

from __future__ import annotations

import re
from typing import Mapping

METADATA_KEY = "ss_training_comment"
SEPARATOR = " | "
_FACTS = re.compile(r"(?:^| \| )kohyawan (?P<version>\S+); (?P<pairs>[^|]*)$")
_PAIR = re.compile(r"(\w+)=([^;]+)")


def training_comment(version: str, *, task: str, expert: str, profile: str, variant: str | None = None,
                     user: str | None = None) -> str:
    """The ``training_comment`` kohyawan gives the trainer: the user's own comment first, if any."""
    pairs = {"task": task, "expert": expert, "profile": profile, "variant": variant}
    facts = f"kohyawan {version}; " + "; ".join(f"{k}={v}" for k, v in pairs.items() if v)
    return f"{user}{SEPARATOR}{facts}" if user else facts


def facts(metadata: Mapping[str, str]) -> dict[str, str]:
    """What kohyawan's training comment in a file's metadata says (``task``, ``expert``, ``profile``,
    ``variant``, ``version``), or {} when there is none."""
    m = _FACTS.search(str(metadata.get(METADATA_KEY) or ""))
    if not m:
        return {}
    found = {k: v.strip() for k, v in _PAIR.findall(m["pairs"])}
    return {"version": m["version"], **found}
