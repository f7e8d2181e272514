"""What a file's name says that its header cannot: which Wan 2.2 expert it is, which WAN release.

High- and low-noise experts of WAN 2.2 A14B have byte-for-byte identical headers (same names, shapes,
dtypes), and so do a Wan 2.1 T2V 14B and either Wan 2.2 T2V expert. Only the name can tell them apart.
Design: docs/architecture.md.
"""

from __future__ import annotations

import re
from pathlib import PurePath

_HIGH = {"high", "highnoise", "hnoise"}
_LOW = {"low", "lownoise", "lnoise"}


def _tokens(text: str) -> list[str]:
    # "Wan2.2-T2V_HighNoise" -> ["wan2", "2", "t2v", "high", "noise"]: split camelCase, then on non-alnum.
    text = re.sub(r"([a-z])([A-Z])", r"\1_\2", text)
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def _expert_in(text: str) -> set[str]:
    toks = _tokens(text)
    joined = "".join(toks)
    found = set()
    if _HIGH & set(toks) or "highnoise" in joined:
        found.add("high")
    if _LOW & set(toks) or "lownoise" in joined:
        found.add("low")
    return found


def expert_hint(path: str | PurePath) -> tuple[str | None, str | None]:
    """("high" | "low" | None, why-None note). The file name counts first, then its folder's name
    (upstream ships experts as ``high_noise_model/`` and ``low_noise_model/`` folders)."""
    p = PurePath(path)
    stem = p.name.rsplit(".", 1)[0] if "." in p.name else p.name
    for part in (stem, p.parent.name):
        found = _expert_in(part)
        if len(found) == 1:
            return found.pop(), None
        if len(found) == 2:
            return None, "its name mentions both high and low noise"
    return None, None


def family_hint(path: str | PurePath) -> str | None:
    """'wan2.1' | 'wan2.2' | None from names like wan2.2_..., Wan2_1-..., wan22, ...A14B..."""
    p = PurePath(path)
    text = f"{p.parent.name}/{p.name}".lower()
    if re.search(r"wan[\s_.-]?2[\s_.-]?2(?![0-9])", text) or re.search(r"(?<![a-z0-9])a14b(?![a-z0-9])", text):
        return "wan2.2"
    if re.search(r"wan[\s_.-]?2[\s_.-]?1(?![0-9])", text):
        return "wan2.1"
    return None
