"""At 80 columns (a pipe) a table never cuts a path or a command, and never breaks a word (issue 15, item 14).

Every command runs as a real process with its output piped and COLUMNS=80; what must appear whole comes from
the same command's --json.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchkit import CLI, FAST_ENV, write_manifest
from conftest import make_dataset
from kohyawan.batch.tables import batch_rows, sweep_rows
from registry_fakes import write_lora

ROOT = Path(__file__).resolve().parents[1]


def narrow(*args, cwd=None, **extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", **FAST_ENV, **extra}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _fits(text: str) -> None:
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text


def _words_whole(text: str, rows) -> None:
    """Every word of every cell appears whole in the output (a word broken across lines would not)."""
    tokens = set(text.split())
    broken = [word for row in rows for cell in row for word in str(cell).split() if word not in tokens]
    assert not broken, (broken, text)


def test_doctor_prints_every_fix_whole(tmp_path):
    checks = json.loads(narrow("doctor", "--json", cwd=tmp_path).stdout)["checks"]
    fixes = [c["fix"] for c in checks if c["status"] != "ok" and c.get("fix")]
    assert any("https://" in f or "huggingface" in f for f in fixes)  # commands worth copying are among them
    proc = narrow("doctor", cwd=tmp_path)
    assert "…" not in proc.stdout, proc.stdout
    lines = proc.stdout.splitlines()
    for fix in fixes:
        assert any(line.endswith(fix) for line in lines), (fix, proc.stdout)
    for c in checks:  # results wrap between words only (amounts of free RAM and disk move between the runs)
        _words_whole(proc.stdout, [[w for w in c["summary"].split() if "/" in w or not any(ch.isdigit() for ch in w)]])


def test_registry_show_prints_the_file_name_whole(tmp_path):
    lora = write_lora(tmp_path / "x.safetensors", metadata={"kohyawan.task": "t2v-1.3B"})
    reg = tmp_path / "registry"
    for _ in range(2):
        r = narrow("export", lora, "--name", "sarah-with-a-rather-long-name", "--kind", "character",
                   "--client", "brand-x-europe", "--registry", reg, "--score", "likeness=8")
        assert r.returncode == 0, r.stderr
    shown = json.loads(narrow("registry", "show", "sarah-with-a-rather-long-name", "--registry", reg,
                              "--json").stdout)
    names = [Path(f["path"]).name for v in shown["versions"] for f in v["files"]]
    assert len(names) == 2 and all(len(n) > 60 for n in names)
    proc = narrow("registry", "show", "sarah-with-a-rather-long-name", "--registry", reg)
    assert proc.returncode == 0, proc.stderr
    for name in names:
        assert name in proc.stdout.split(), proc.stdout
    _words_whole(proc.stdout, [[v["status"], v["created"][:10], "likeness=8"] for v in shown["versions"]])
    assert "…" not in proc.stdout


@pytest.mark.slow
def test_sweep_and_batch_status_wrap_no_word(tmp_path):
    data = make_dataset(tmp_path / "data", images=3)
    argv = ["sweep", "--profile", "character", "--dataset", data, "--task", "t2v-1.3B", "--variants",
            "conservative,aggressive", "--gpus", "0,1", "--rehearse", "--runs-dir", tmp_path / "runs",
            "--name", "narrow"]
    doc = json.loads(narrow(*argv, "--json").stdout)
    proc = narrow(*argv)  # continues: nothing to do, prints the table
    assert proc.returncode == 0, proc.stderr
    _fits(proc.stdout.split("sweep.json:")[0])
    _words_whole(proc.stdout, sweep_rows(doc))

    manifest = write_manifest(tmp_path / "b", textwrap.dedent("""
        [defaults]
        profile = "character"
        task = "t2v-1.3B"
        rehearse = true
        registry = "registry"
        overrides = { max_train_epochs = 1 }

        [[jobs]]
        client = "brand-x"
        name = "sarah"
        dataset = "data/sarah"
        """), datasets=("sarah",))
    folder = tmp_path / "b" / "clients.batch"
    ran = narrow("batch", "run", manifest, "--gpus", "0", "--json")
    assert ran.returncode == 0, ran.stderr
    doc = json.loads(narrow("batch", "status", folder, "--json").stdout)
    proc = narrow("batch", "status", folder)
    assert proc.returncode == 0, proc.stderr
    _fits("\n".join(line for line in proc.stdout.splitlines() if str(folder) not in line))  # the table
    _words_whole(proc.stdout, batch_rows(doc))
    assert str(folder) in proc.stdout
