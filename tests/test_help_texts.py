"""Help texts and hints a user copies from (issue 15, item 15)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from conftest import make_dataset, make_models
from kohyawan.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _commands(cmd=cli, path=()):
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(None):
            yield from _commands(cmd.get_command(None, name), path + (name,))
    else:
        yield path, cmd


def test_every_option_has_help():
    missing = [f"kohyawan {' '.join(path)} {p.opts[0]}" for path, cmd in _commands() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, "options without help: " + ", ".join(missing)


def test_help_points_to_the_docs_not_to_source_files():
    runner = CliRunner()
    for path, _cmd in _commands():
        text = runner.invoke(cli, [*path, "--help"], terminal_width=200).output
        assert not re.search(r"kohyawan/[\w/]+\.py", text), (path, text)
    text = runner.invoke(cli, ["estimate", "--help"], terminal_width=200).output
    assert "docs/estimate.md" in text and "memory.py" not in text


def test_next_hint_is_a_command_that_runs_as_printed(tmp_path):
    data = make_dataset(tmp_path / "data", images=2)
    models = make_models(tmp_path / "models")
    out = tmp_path / "cfg $HOME 'x' (1)"
    proc = subprocess.run([sys.executable, "-m", "kohyawan", "config", "render", "--profile", "character",
                           "--dataset", data, "--dit", models["dit"], "--dit-high-noise", models["dit_high_noise"],
                           "--vae", models["vae"], "--t5", models["t5"], "--out", out], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    hint = next(line for line in proc.stdout.splitlines() if line.startswith("Next: "))
    assert shlex.split(hint[len("Next: "):]) == ["bash", str(out / "commands.sh")], hint
    assert f"Wrote 4 files to {out}:" in proc.stdout
