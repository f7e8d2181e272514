"""The README's quickstart runs, command for command, on a fresh machine."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def quickstart_commands():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_is_all_kohyawan_commands():
    commands = quickstart_commands()
    assert len(commands) >= 8 and all(c.startswith("kohyawan ") for c in commands)


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    examples = ROOT / "examples"
    if not examples.is_dir():
        pytest.skip("examples/ is not next to the tests (installed elsewhere)")
    shutil.copytree(examples, tmp_path / "examples")
    outputs = {}
    for command in quickstart_commands():
        argv = [sys.executable, "-m", "kohyawan", *shlex.split(command)[1:]]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs[command.split()[1]] = result.stdout + result.stderr
    assert "REHEARSAL" in outputs["run"] and "succeeded" in outputs["run"]
    assert "exported character/demo/sarah v1" in outputs["export"]
    assert "sarah" in outputs["registry"]
    assert (tmp_path / "cfg" / "sarah" / "commands.sh").is_file()
    assert (tmp_path / "data" / "sarah" / "report.json").is_file()
