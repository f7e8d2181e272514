"""kohyawan registry deploy: copy into ComfyUI, sha check, no overwrite, undeploy only what we deployed."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kohyawan.cli import cli
from registry_fakes import write_lora


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    return [write_lora(d / f"x{i}.safetensors", seed=i, metadata={"kohyawan.task": "t2v-1.3B"}) for i in range(2)]


@pytest.fixture
def setup(tmp_path, loras):
    reg = tmp_path / "reg"
    for src in loras:
        assert invoke("export", src, "--name", "sarah", "--kind", "character", "--registry", reg).exit_code == 0
    comfy = tmp_path / "Comfy UI 'x'"
    (comfy / "models" / "loras").mkdir(parents=True)
    return reg, comfy


def test_deploy_current_copies_verifies_and_records(setup):
    reg, comfy = setup
    r = invoke("registry", "deploy", "sarah", "--comfyui", comfy, "--registry", reg)
    assert r.exit_code == 2 and "no current version" in r.stderr
    invoke("registry", "promote", "sarah", "v1", "--registry", reg)
    r = invoke("registry", "deploy", "sarah", "--comfyui", comfy, "--registry", reg, "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["version"] == 1 and res["files"][0]["action"] == "copied"
    dest = Path(res["files"][0]["file"])
    assert dest.parent == (comfy / "models" / "loras" / "kohyawan" / "character").resolve()
    assert dest.name.startswith("wan2.2_character_sarah_v1_")
    assert res["lora_names"] == [f"kohyawan/character/{dest.name}"]
    src = next(reg.rglob(dest.name))
    assert dest.read_bytes() == src.read_bytes()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    # same content again: a no-op
    r = invoke("registry", "deploy", "sarah", "current", "--comfyui", comfy, "--registry", reg, "--json")
    assert json.loads(r.stdout)["files"][0]["action"] == "already there"
    idx = json.loads((reg / "index.json").read_text())["models"]["character/default/sarah"]
    assert len(idx["deployments"]) == 1 and idx["deployments"][0]["sha256"] == idx["versions"][0]["files"][0]["sha256"]
    r = invoke("registry", "deploy", "sarah", "v2", "--comfyui", comfy, "--registry", reg)
    assert r.exit_code == 0 and "copied:" in r.stdout and "LoraLoaderModelOnly lora_name: kohyawan/character/" in r.stdout
    assert len(list(dest.parent.glob("*.safetensors"))) == 2


def test_never_overwrites_a_different_file_of_the_same_name(setup):
    reg, comfy = setup
    target = comfy / "models" / "loras" / "kohyawan" / "character"
    target.mkdir(parents=True)
    name = next(reg.rglob("wan2.2_character_sarah_v2_*.safetensors")).name
    (target / name).write_bytes(b"someone else's file")
    r = invoke("registry", "deploy", "sarah", "v2", "--comfyui", comfy, "--registry", reg)
    assert r.exit_code == 1 and "different content; not overwriting" in r.stderr
    assert (target / name).read_bytes() == b"someone else's file"
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_damaged_registry_copy_is_not_deployed(setup):
    reg, comfy = setup
    src = next(reg.rglob("wan2.2_character_sarah_v1_*.safetensors"))
    data = bytearray(src.read_bytes())
    data[-5] ^= 0xFF
    src.write_bytes(bytes(data))
    r = invoke("registry", "deploy", "sarah", "v1", "--comfyui", comfy, "--registry", reg)
    assert r.exit_code == 1 and "damaged" in r.stderr
    assert not list((comfy / "models" / "loras").rglob("*sarah*"))


def test_undeploy_removes_only_what_it_deployed(setup):
    reg, comfy = setup
    for v in ("v1", "v2"):
        assert invoke("registry", "deploy", "sarah", v, "--comfyui", comfy, "--registry", reg).exit_code == 0
    target = comfy / "models" / "loras" / "kohyawan" / "character"
    mine = target / "my own.safetensors"
    mine.write_bytes(b"not kohyawan's")
    v2 = next(target.glob("*_v2_*"))
    v2.write_bytes(b"changed by hand")  # changed since deployment: must be left alone
    r = invoke("registry", "deploy", "sarah", "--undeploy", "--comfyui", comfy, "--registry", reg, "--json")
    assert r.exit_code == 1
    res = json.loads(r.stdout)
    assert sorted(f["action"] for f in res["files"]) == ["left in place: changed since it was deployed", "removed"]
    assert mine.exists() and v2.exists() and not list(target.glob("*_v1_*"))
    idx = json.loads((reg / "index.json").read_text())["models"]["character/default/sarah"]
    assert [d["version"] for d in idx["deployments"]] == [2]
    r = invoke("registry", "deploy", "sarah", "v1", "--undeploy", "--comfyui", comfy, "--registry", reg)
    assert r.exit_code == 2 and "nothing to undeploy" in r.stderr


def test_comfy_folder_must_look_like_comfyui(setup, tmp_path):
    reg, _ = setup
    (tmp_path / "empty").mkdir()
    r = invoke("registry", "deploy", "sarah", "v1", "--comfyui", tmp_path / "empty", "--registry", reg)
    assert r.exit_code == 2 and "does not look like a ComfyUI folder" in r.stderr
    assert not (tmp_path / "empty" / "models").exists()


def test_roles_gate_deploy(setup):
    reg, comfy = setup
    (reg / "roles.toml").write_text('[users]\nbob = ["training"]\ndave = ["production"]\n')
    r = invoke("registry", "deploy", "sarah", "v1", "--comfyui", comfy, "--registry", reg, env={"KOHYAWAN_USER": "bob"})
    assert r.exit_code == 2 and "may not deploy" in r.stderr and "dave" in r.stderr
    r = invoke("registry", "deploy", "sarah", "v1", "--comfyui", comfy, "--registry", reg, env={"KOHYAWAN_USER": "dave"})
    assert r.exit_code == 0
