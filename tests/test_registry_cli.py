"""kohyawan registry list|show|promote|deprecate|rollback|verify|notes, roles, and concurrent publishing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kohyawan.cli import cli
from registry_fakes import make_run, write_lora


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def one_lora(tmp_path_factory):
    return write_lora(tmp_path_factory.mktemp("src") / "x.safetensors", metadata={"kohyawan.task": "t2v-1.3B"})


@pytest.fixture
def reg(tmp_path, one_lora):
    """A registry with sarah v1..v3 (brand-x) and a style model."""
    reg = tmp_path / "reg"
    for i in range(3):
        r = invoke("export", one_lora, "--name", "sarah", "--kind", "character", "--client", "brand-x",
                   "--registry", reg, "--notes", f"try {i + 1}")
        assert r.exit_code == 0, r.stderr
    assert invoke("export", one_lora, "--name", "oil", "--kind", "style", "--registry", reg).exit_code == 0
    return reg


def test_list_table_and_json(reg):
    r = invoke("registry", "list", "--registry", reg)
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert any("sarah" in l and "character" in l and "brand-x" in l and "v3 testing" in l for l in lines)
    assert any("oil" in l and "style" in l for l in lines)
    data = json.loads(invoke("registry", "list", "--registry", reg, "--json").stdout)
    assert [m["model"] for m in data["models"]] == ["character/brand-x/sarah", "style/default/oil"]
    assert data["models"][0]["versions"] == 3 and data["models"][0]["current"] is None
    data = json.loads(invoke("registry", "list", "--registry", reg, "--kind", "style", "--json").stdout)
    assert [m["name"] for m in data["models"]] == ["oil"]


def test_promote_deprecate_rollback_through_the_cli(reg):
    assert invoke("registry", "promote", "sarah", "v1", "--registry", reg).exit_code == 0
    r = invoke("registry", "promote", "sarah", "2", "--registry", reg, "--reason", "sharper", "--json")
    assert json.loads(r.stdout)["statuses"] == {"v1": "deprecated", "v2": "current", "v3": "testing"}
    r = invoke("registry", "promote", "sarah", "v3", "--registry", reg)
    assert r.stdout.strip() == "character/brand-x/sarah: v3 promoted; current is v3"
    r = invoke("registry", "rollback", "sarah", "--registry", reg, "--reason", "faces melt at 0.9", "--json")
    assert json.loads(r.stdout) == {"model": "character/brand-x/sarah", "action": "rollback", "from": 3, "to": 2,
                                    "current": 2, "reason": "faces melt at 0.9"}
    notes = next(reg.rglob("*sarah_training_notes.md")).read_text()
    assert "**Current (production)**: v2" in notes and "faces melt at 0.9" in notes
    r = invoke("registry", "deprecate", "sarah", "v2", "--registry", reg)
    assert r.exit_code == 0 and "has no current version now" in r.stderr
    show = json.loads(invoke("registry", "show", "sarah", "--registry", reg, "--json").stdout)
    assert [v["status"] for v in show["versions"]] == ["deprecated"] * 3
    assert show["versions"][2]["rolled_back"]["reason"] == "faces melt at 0.9"


def test_show_table(reg):
    r = invoke("registry", "show", "sarah", "--registry", reg)
    assert r.exit_code == 0
    assert r.stdout.startswith("character/brand-x/sarah  (notes: ")
    rows = [l for l in r.stdout.splitlines() if "testing" in l]
    assert [row.split()[1] for row in rows] == ["v3", "v2", "v1"]


@pytest.mark.parametrize("args,msg", [
    (("registry", "promote", "sarah", "v9"), "no version v9"),
    (("registry", "promote", "sarah", "vx"), "is not a version"),
    (("registry", "show", "nobody"), "no model 'nobody'"),
    (("registry", "show", "sarah", "--client", "other"), "no model 'sarah' client=other"),
    (("registry", "rollback", "sarah", "--reason", "x"), "no current version"),
    (("registry", "notes", "sarah", "--score", "a=1"), "--score needs --version"),
    (("registry", "deploy", "sarah", "--comfyui", "/nonexistent"), "does not look like a ComfyUI folder"),
])
def test_bad_requests_exit_2_with_one_line(reg, args, msg):
    r = invoke(*args, "--registry", reg)
    assert r.exit_code == 2, r.output
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ambiguous_name_needs_client(reg, one_lora):
    invoke("export", one_lora, "--name", "sarah", "--kind", "character", "--client", "other", "--registry", reg)
    r = invoke("registry", "show", "sarah", "--registry", reg)
    assert r.exit_code == 2 and "ambiguous" in r.stderr and "character/other/sarah" in r.stderr
    assert invoke("registry", "show", "sarah", "--client", "other", "--registry", reg).exit_code == 0


def test_notes_add_and_scores_regenerate_the_file(reg):
    r = invoke("registry", "notes", "sarah", "--registry", reg, "--version", "v2", "--score", "likeness=9",
               "--add", "holds identity at 0.9")
    assert r.exit_code == 0
    assert "| likeness | 9 |" in r.stdout and "holds identity at 0.9" in r.stdout
    r = invoke("registry", "notes", "sarah", "--registry", reg, "--add", "client asked for more smile")
    assert "## Model notes" in r.stdout
    j = json.loads(invoke("registry", "notes", "sarah", "--registry", reg, "--json").stdout)
    assert Path(j["notes_file"]).read_text() == j["text"] and "more smile" in j["text"]


def test_verify_finds_corrupted_and_missing_files(reg):
    r = invoke("registry", "verify", "--registry", reg, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["checked"] == 4
    files = sorted(reg.rglob("wan2.2_character_sarah_v*.safetensors"))
    with open(files[0], "r+b") as f:  # flip one byte inside the tensor data
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    files[1].unlink()
    (files[2].parent / "stray.safetensors").write_bytes(b"x")
    r = invoke("registry", "verify", "--registry", reg, "--quick")
    assert r.exit_code == 1 and "missing" in r.stdout and "sha256 differs" not in r.stdout
    assert "4 file(s) checked (presence and size only), 1 problem(s)" in r.stdout
    r = invoke("registry", "verify", "--registry", reg)
    assert r.exit_code == 1
    assert "sha256 differs" in r.stdout and "missing" in r.stdout and "does not know" in r.stdout
    assert "error: registry verify found 2 problem(s)" in r.stderr
    j = json.loads(invoke("registry", "verify", "--registry", reg, "--json").stdout)
    assert {p["problem"].split(" ")[0] for p in j["problems"]} == {"sha256", "missing"}
    assert invoke("registry", "verify", "oil", "--registry", reg).exit_code == 0


def test_roles_toml_limits_who_does_what(reg, one_lora):
    (reg / "roles.toml").write_text('[users]\nalice = ["admin"]\nbob = ["training"]\ncarol = "production"\n')
    as_bob = {"KOHYAWAN_USER": "bob"}
    r = invoke("registry", "promote", "sarah", "v1", "--registry", reg, env=as_bob)
    assert r.exit_code == 2
    assert "user 'bob' may not promote" in r.stderr and "alice may" in r.stderr and "'bob' has training" in r.stderr
    assert invoke("export", one_lora, "--name", "sarah", "--kind", "character", "--client", "brand-x",
                  "--registry", reg, env=as_bob).exit_code == 0
    r = invoke("export", one_lora, "--name", "z", "--kind", "style", "--registry", reg, env={"KOHYAWAN_USER": "carol"})
    assert r.exit_code == 2 and "may not export" in r.stderr
    r = invoke("export", one_lora, "--name", "z", "--kind", "style", "--registry", reg, env={"KOHYAWAN_USER": "mallory"})
    assert r.exit_code == 2 and "'mallory' has no role" in r.stderr
    assert invoke("registry", "promote", "sarah", "v1", "--registry", reg, env={"KOHYAWAN_USER": "alice"}).exit_code == 0
    assert invoke("registry", "list", "--registry", reg, env={"KOHYAWAN_USER": "mallory"}).exit_code == 0
    (reg / "roles.toml").write_text('[users]\nbob = ["trainer"]\n')
    r = invoke("registry", "promote", "sarah", "v2", "--registry", reg, env=as_bob)
    assert r.exit_code == 2 and "unknown role(s) trainer" in r.stderr


@pytest.mark.slow
def test_six_processes_exporting_at_once_lose_no_version(tmp_path, one_lora):
    reg = tmp_path / "shared reg"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "kohyawan", "export", str(one_lora), "--name", "sarah",
                               "--kind", "character", "--registry", str(reg), "--notes", f"from process {i}", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for i in range(6)]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    assert all(rc == 0 for _, rc in results), [e for (o, e), _ in results]
    got = sorted(json.loads(o)["version"] for (o, e), _ in results)
    assert got == [1, 2, 3, 4, 5, 6]
    index = json.loads((reg / "index.json").read_text())
    vs = index["models"]["character/default/sarah"]["versions"]
    assert [v["version"] for v in vs] == [1, 2, 3, 4, 5, 6]
    assert sorted(v["notes"][0]["text"] for v in vs) == [f"from process {i}" for i in range(6)]
    for v in vs:
        assert (reg / v["files"][0]["path"]).is_file()
    notes = next(reg.rglob("*_training_notes.md")).read_text()
    assert all(f"## v{n} " in notes for n in range(1, 7)) and all(f"from process {i}" in notes for i in range(6))
    assert not list(reg.rglob(".tmp-*"))
    r = invoke("registry", "verify", "--registry", reg, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["checked"] == 6


def test_a_held_lock_makes_writers_wait_then_give_up(tmp_path, one_lora):
    import fcntl

    reg = tmp_path / "reg"
    assert invoke("export", one_lora, "--name", "s", "--kind", "style", "--registry", reg).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "KOHYAWAN_LOCK_TIMEOUT": "1"}
    with open(reg / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.run([sys.executable, "-m", "kohyawan", "registry", "promote", "s", "v1", "--registry", str(reg)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1
    assert "waiting for the registry lock" in p.stderr and "stayed locked for 1 s" in p.stderr
    assert json.loads((reg / "index.json").read_text())["models"]["style/default/s"]["versions"][0]["status"] == "testing"


def test_files_are_readable_by_the_team_and_reading_needs_no_torch(reg):
    umask = os.umask(0)
    os.umask(umask)
    for p in list(reg.rglob("*.safetensors")) + [reg / "index.json"]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p  # not mkstemp's private 0600
    code = ("import sys; from kohyawan.commands import registry; from kohyawan.registry import export, deploy, verify, "
            "sources, store; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False"


def test_a_damaged_index_is_reported_and_the_previous_one_is_kept(reg):
    prev = json.loads((reg / "index.prev.json").read_text())
    assert len(prev["models"]) == 1  # the state before the style model was exported
    (reg / "index.json").write_text('{"schema": 1, "models": {')
    r = invoke("registry", "list", "--registry", reg)
    assert r.exit_code == 1 and "damaged" in r.stderr and "index.prev.json" in r.stderr
    (reg / "index.json").write_text('{"schema": 99, "models": {}}')
    r = invoke("registry", "list", "--registry", reg)
    assert r.exit_code == 2 and "schema 99" in r.stderr


def test_a_bad_lock_timeout_setting_is_a_clear_error(reg):
    r = invoke("registry", "promote", "sarah", "v1", "--registry", reg, env={"KOHYAWAN_LOCK_TIMEOUT": "soon"})
    assert r.exit_code == 2 and "KOHYAWAN_LOCK_TIMEOUT='soon'" in r.stderr
    r = invoke("registry", "notes", "sarah", "--version", "v1", "--registry", reg)
    assert r.exit_code == 2 and "--version goes with --add or --score" in r.stderr
