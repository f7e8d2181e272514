"""Terminal output: one rich console per stream and the ``--json`` printer.

Data goes to stdout; progress, warnings and errors go to stderr so ``--json`` output stays clean.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


def out() -> Console:
    # Built per call so click's CliRunner, which swaps sys.stdout, is honoured.
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def err() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def print_json(data: Any) -> None:
    sys.stdout.write(to_json(data) + "\n")


def warn(message: str) -> None:
    from rich.markup import escape

    err().print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False)
