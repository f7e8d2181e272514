"""What a doctor check reports (``Check``: ok / warn / fail / skip with one fix) and the JSON report
over a list of them (``summarise``, schema version 1). Pure; the checks themselves live in ``host`` and
``trainer``, the order they run in in ``checklist``. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

STATUSES = ("ok", "warn", "fail", "skip")


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    status: str                      # ok | warn | fail | skip
    summary: str
    fix: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status, "summary": self.summary,
                "fix": self.fix, "details": dict(self.details)}


def summarise(checks: Sequence[Check]) -> dict[str, Any]:
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return {"version": 1, "ok": counts["fail"] == 0, "counts": counts, "checks": [c.to_dict() for c in checks]}
