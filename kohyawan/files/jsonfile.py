"""Reading the JSON documents kohyawan and the trainer leave behind (run.json, plan.json, sweep.json, grid.json,
cache documents) where a missing or damaged file means "nothing known", never an error. Commands that must
refuse a damaged file read it themselves and say so. Design: docs/architecture.md.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_object(path: Path) -> dict | None:
    """The JSON object in ``path``; None when the file is missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
