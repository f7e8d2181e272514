"""Golden-file comparison: fail with a unified diff; regenerate on purpose with KOHYAWAN_REGEN_GOLDEN=1."""

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check(relpath: str, actual: str) -> None:
    path = GOLDEN / relpath
    if os.environ.get("KOHYAWAN_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        raise AssertionError(f"golden file {path} is missing; create it with KOHYAWAN_REGEN_GOLDEN=1 pytest ...")
    expected = path.read_text(encoding="utf-8")
    if expected != actual:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"golden/{relpath}", "rendered"))
        raise AssertionError(f"{relpath} differs from its golden file (if the change is intended, "
                             f"rerun with KOHYAWAN_REGEN_GOLDEN=1 and review the diff):\n{diff}")
