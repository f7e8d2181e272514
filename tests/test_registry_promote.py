"""A rehearsal's LoRA does not reach production by accident: `registry promote` needs --force for it, as
`export` warns for it (issue 15, item 13)."""

import json

import pytest
from click.testing import CliRunner

from kohyawan.cli import cli
from registry_fakes import write_lora


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def reg(tmp_path):
    reg = tmp_path / "reg"
    rehearsed = write_lora(tmp_path / "rehearsed.safetensors",
                           metadata={"kohyawan.task": "t2v-1.3B", "kohyawan.rehearsal": "true"})
    trained = write_lora(tmp_path / "trained.safetensors", metadata={"kohyawan.task": "t2v-1.3B"}, seed=1)
    for source in (trained, rehearsed):  # v1 trained for real, v2 from a rehearsal
        r = invoke("export", source, "--name", "sarah", "--kind", "character", "--registry", reg)
        assert r.exit_code == 0, r.stderr
    assert "rehearsal run" in r.stderr  # export's own warning
    return reg


def _statuses(reg):
    index = json.loads((reg / "index.json").read_text())
    return {f"v{v['version']}": v["status"] for v in index["models"]["character/default/sarah"]["versions"]}


def test_promoting_a_rehearsal_needs_force(reg):
    assert invoke("registry", "promote", "sarah", "v1", "--registry", reg).exit_code == 0
    before = (reg / "index.json").read_bytes()
    r = invoke("registry", "promote", "sarah", "v2", "--registry", reg)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("error: character/default/sarah v2 comes from a rehearsal run") and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (reg / "index.json").read_bytes() == before and _statuses(reg) == {"v1": "current", "v2": "testing"}

    r = invoke("registry", "promote", "sarah", "v2", "--registry", reg, "--force")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "rehearsal run" in r.stderr
    assert _statuses(reg) == {"v1": "deprecated", "v2": "current"}


def test_deprecating_a_rehearsal_needs_nothing(reg):
    r = invoke("registry", "deprecate", "sarah", "v2", "--registry", reg)
    assert r.exit_code == 0 and "rehearsal" not in r.stderr and "error" not in r.stderr
