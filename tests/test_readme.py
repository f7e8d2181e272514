"""The README's quickstart is something a person can type: in an empty folder outside the checkout, every line a
kohyawan command after the set-up (tests/test_docs_output.py runs it and compares what it prints)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def quickstart_lines():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_runs_in_an_empty_folder_outside_the_checkout():
    lines = quickstart_lines()
    assert lines[0] == "mkdir ~/wan-demo && cd ~/wan-demo"
    assert lines[1].startswith("CHECKOUT=")
    commands = lines[2:]
    assert len(commands) >= 8 and all(c.startswith("kohyawan ") for c in commands)
    # the example is reached through the checkout (examples/ is not installed), never relative to the cwd
    assert any('"$CHECKOUT/examples/sarah"' in c for c in commands)
    assert not any(re.search(r"(^|\s)examples/", c) for c in commands)


def test_gitignore_ignores_nothing_for_the_quickstart():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert not {"/models/", "/data/", "/cfg/", "/registry/", "models/", "data/", "cfg/", "registry/"} & set(ignored)
