"""Manifest validation: everything wrong is reported at once, before anything starts."""

import json

import pytest
from click.testing import CliRunner

from batchkit import write_manifest
from kohyawan.batch import manifest
from kohyawan.cli import cli
from kohyawan.errors import ConfigError

GOOD = """
[defaults]
profile = "character"
task = "t2v-1.3B"
rehearse = true
registry = "registry"
overrides = { max_train_epochs = 2 }

[[jobs]]
client = "brand-x"
name = "sarah"
dataset = "data/sarah"
overrides = { network_dim = 16 }
notes = "new hair"

[[jobs]]
client = "brand-x"
name = "tom"
kind = "style"
dataset = "data/tom"
env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }
"""


def test_good_manifest_resolves_jobs_with_paths_relative_to_the_manifest(tmp_path):
    path = write_manifest(tmp_path, GOOD)
    m = manifest.load(path)
    assert [j.key for j in m.jobs] == ["brand-x/sarah", "brand-x/tom"]
    sarah, tom = m.jobs
    assert sarah.dataset == (tmp_path / "data" / "sarah").absolute()
    # defaults' overrides merge with the job's; the job's win
    assert sarah.sets == ("max_train_epochs=2", "network_dim=16")
    assert tom.sets == ("max_train_epochs=2",)
    assert sarah.kind == "character" and tom.kind == "style"
    assert tom.env == {"KOHYAWAN_REHEARSE_FAULTS": "crash@3"}
    assert m.registry == tmp_path / "registry" and m.rehearse
    assert sarah.run_name == "brand-x__sarah"
    assert sarah.fingerprint and sarah.fingerprint != tom.fingerprint


def test_every_problem_is_reported_together(tmp_path):
    path = write_manifest(tmp_path, """
    [defaults]
    profle = "character"
    rehearse = true
    task = "t2v-1.3B"

    [slurm]
    time = "tomorrow"
    gpu = 1

    [[jobs]]
    client = "../../etc"
    name = "sarah"
    dataset = "data/missing"

    [[jobs]]
    name = "tom"
    dataset = "data/tom"
    overrides = { netwrk_dim = 3 }

    [[jobs]]
    name = "tom"
    dataset = "data/ana"

    [[jobs]]
    name = "a/b"
    dataset = "data/ana"
    kind = "charcter"
    export = "yes"

    [[jobs]]
    dataset = "data/ana"
    """)
    with pytest.raises(ConfigError) as info:
        manifest.load(path)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "[defaults]: unknown key 'profle'; did you mean 'profile'?" in text
    assert "[slurm]: unknown key 'gpu'; did you mean 'gpus'?" in text
    assert "[slurm]: time 'tomorrow' is not a SLURM time" in text
    assert "client '../../etc' must be letters, digits and hyphens" in text
    assert "dataset folder not found" in text and "data/missing" in text
    assert "unknown key 'netwrk_dim'; did you mean 'network_dim'?" in text
    assert "job 3 (tom): duplicate name 'tom' for client 'default' (also job 2)" in text
    assert "name 'a/b' must be letters" in text
    assert "'export' must be bool" in text
    assert "kind 'charcter' must be one of character, style, motion, domain; did you mean 'character'?" in text
    assert "job 5: 'name' is required" in text
    assert len(problems) == 11, text


@pytest.mark.parametrize("name", ["..", ".hidden", "a b", "x_y", "é", "a" * 65, "-lead", "$(rm -rf x)"])
def test_names_that_could_leave_the_registry_folder_are_refused(tmp_path, name):
    path = write_manifest(tmp_path, f"""
    [defaults]
    rehearse = true
    task = "t2v-1.3B"
    [[jobs]]
    name = {json.dumps(name)}
    dataset = "data/sarah"
    """)
    with pytest.raises(ConfigError, match="must be letters, digits and hyphens"):
        manifest.load(path)


def test_models_must_exist_and_real_runs_need_them(tmp_path):
    path = write_manifest(tmp_path, """
    [defaults]
    task = "t2v-1.3B"
    [[jobs]]
    name = "sarah"
    dataset = "data/sarah"
    dit = "models/none.safetensors"
    """)
    with pytest.raises(ConfigError, match="dit file not found"):
        manifest.load(path)
    path.write_text(path.read_text().replace('dit = "models/none.safetensors"\n', ""))
    with pytest.raises(ConfigError, match="--dit is required"):
        manifest.load(path)


def test_bad_toml_and_missing_jobs_are_one_line_errors(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[defaults\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        manifest.load(path)
    path.write_text("[defaults]\nrehearse = true\n")
    with pytest.raises(ConfigError, match=r"no \[\[jobs\]\]"):
        manifest.load(path)


def test_cli_dry_run_validates_and_shows_the_plan_without_writing(tmp_path):
    path = write_manifest(tmp_path, GOOD)
    result = CliRunner().invoke(cli, ["batch", str(path), "--dry-run", "--gpus", "0,1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["slots"] == ["0", "1"] and doc["rehearsal"] is True
    assert [j["action"] for j in doc["jobs"]] == ["run", "run"]
    argv = doc["jobs"][0]["argv"]
    assert argv[argv.index("--name") + 1] == "brand-x__sarah" and "--rehearse" in argv
    assert not (tmp_path / "clients.batch").exists()
    bad = CliRunner().invoke(cli, ["batch", "run", str(tmp_path / "nope.toml"), "--dry-run"])
    assert bad.exit_code == 2 and "manifest not found" in bad.output


@pytest.mark.parametrize("name", ["sarah", "brand-x", "A9", "..", ".hidden", "a b", "x_y", "é", "a" * 64, "a" * 65,
                                  "-lead", "$(rm -rf x)", "a/b"])
def test_manifest_names_follow_the_registry_rule(name):
    """The manifest refuses exactly what the registry would refuse at export time, not later."""
    from kohyawan.errors import KohyawanError
    from kohyawan.registry.naming import check_slug

    try:
        check_slug(name, "name")
        registry_ok = True
    except KohyawanError:
        registry_ok = False
    assert bool(manifest.SLUG.fullmatch(name)) == registry_ok


def test_ranges_the_run_command_would_refuse_are_refused_up_front(tmp_path):
    path = write_manifest(tmp_path, """
    [defaults]
    task = "t2v-1.3B"
    rehearse = true
    [[jobs]]
    name = "sarah"
    dataset = "data/sarah"
    gpu_memory = 0
    max_attempts = 0
    checkpoint = "best"
    dtype = "fp8"
    """)
    with pytest.raises(ConfigError) as info:
        manifest.load(path)
    assert len(info.value.problems) == 4, info.value.problems
    assert "checkpoint must be 'auto', 'final' or a step number, got 'best'" in info.value.problems[1]
    assert "dtype must be bf16, fp16 or fp32, got 'fp8'" in info.value.problems[2]
    assert "gpu_memory is the rehearsal's virtual GPU size" in info.value.problems[0]
    assert "max_attempts must be between 1 and 100" in info.value.problems[3]
