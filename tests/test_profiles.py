import json

import pytest
from click.testing import CliRunner

from conftest import make_dataset
from kohyawan.config import profiles
from kohyawan.cli import cli
from kohyawan.errors import ConfigError

GUIDE = {  # use case -> (dim, alpha, lr, epochs)
    "character": (64, 64.0, 1.5e-4, 15),
    "style": (96, 96.0, 1e-4, 20),
    "motion": (128, 128.0, 8e-5, 25),
}
VARIANTS = {"conservative": (8e-5, 64, 12), "standard": (1.2e-4, 64, 15), "aggressive": (1.5e-4, 96, 18)}


@pytest.mark.parametrize("name", sorted(GUIDE))
def test_profiles_carry_the_guide_values(name):
    spec = profiles.resolve(name)
    dim, alpha, lr, epochs = GUIDE[name]
    assert (spec.train["network_dim"], spec.train["network_alpha"]) == (dim, alpha)
    assert spec.train["learning_rate"] == lr
    assert spec.train["max_train_epochs"] == epochs
    assert spec.origin["train.network_dim"] == f"profile:{name}"


def test_domain_profile_stays_inside_the_guide_ranges():
    t = profiles.resolve("domain").train
    assert 8e-5 <= t["learning_rate"] <= 1.2e-4
    assert 96 <= t["network_dim"] <= 128
    assert 10 <= t["max_train_epochs"] <= 15


def test_shared_base_values():
    t = profiles.resolve("style").train
    assert t["optimizer_type"] == "AdamW8bit"
    assert t["lr_scheduler"] == "cosine_with_restarts" and t["lr_scheduler_num_cycles"] == 3
    assert t["lr_warmup_steps"] == 0.05
    assert t["gradient_checkpointing"] is True and t["mixed_precision"] == "bf16"
    assert t["save_every_n_steps"] == 500 and t["save_state"] is True and t["save_precision"] == "bf16"
    assert t["sdpa"] is True and isinstance(t["seed"], int) and t["network_module"] == "networks.lora_wan"
    assert profiles.resolve("style").dataset["batch_size"] == 1


def test_timestep_shift_follows_the_task():
    assert profiles.resolve("character", task="t2v-A14B").train["discrete_flow_shift"] == 12.0
    assert profiles.resolve("character", task="i2v-A14B").train["discrete_flow_shift"] == 5.0
    spec = profiles.resolve("character", task="t2v-1.3B")
    assert spec.train["discrete_flow_shift"] == 3.0 and spec.origin["train.discrete_flow_shift"] == "base"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_layer_over_the_profile(variant):
    spec = profiles.resolve("style", variant=variant)
    lr, dim, epochs = VARIANTS[variant]
    assert (spec.train["learning_rate"], spec.train["network_dim"], spec.train["max_train_epochs"]) == (lr, dim, epochs)
    assert spec.origin["train.learning_rate"] == f"variant:{variant}"


def test_layer_order_set_beats_project_beats_variant(tmp_path):
    project = tmp_path / "kohyawan.toml"
    project.write_text("[train]\nlearning_rate = 3e-5\nnetwork_dim = 48\n")
    spec = profiles.resolve("character", variant="aggressive", project_file=project, sets=["network_dim=32"])
    assert spec.train["learning_rate"] == 3e-5 and spec.origin["train.learning_rate"] == "project:kohyawan.toml"
    assert spec.train["network_dim"] == 32 and spec.origin["train.network_dim"] == "set"
    assert spec.train["max_train_epochs"] == 18 and spec.origin["train.max_train_epochs"] == "variant:aggressive"


@pytest.mark.parametrize("samples,dim,epochs", [(150, 48, 15), (300, 64, 15), (500, 64, 15), (900, 96, 12)])
def test_dataset_size_rules(tmp_path, samples, dim, epochs):
    data = make_dataset(tmp_path / "d", images=samples)
    spec = profiles.resolve("character", dataset_dir=data)
    assert spec.train["network_dim"] == dim and spec.train["max_train_epochs"] == epochs
    if dim != 64:
        assert spec.origin["train.network_dim"] == "dataset-rule"
        assert spec.train["network_alpha"] == float(dim)  # alpha follows dim when they were equal
        assert any(f"network_dim 64 -> {dim}" in n for n in spec.notes)


def test_set_beats_dataset_rule(tmp_path):
    data = make_dataset(tmp_path / "d", images=150)
    spec = profiles.resolve("character", dataset_dir=data, sets=["network_dim=64"])
    assert spec.train["network_dim"] == 64 and spec.origin["train.network_dim"] == "set"


def test_small_dataset_warns_against_the_use_case_minimum(tmp_path):
    data = make_dataset(tmp_path / "d", images=20, videos=5)
    notes = profiles.resolve("character", dataset_dir=data).notes
    assert "dataset has 20 images and 5 clips; the profile's minimum is 150 images or 30 clips" in notes
    assert not any("minimum" in n for n in profiles.resolve(
        "character", dataset_dir=make_dataset(tmp_path / "e", images=150)).notes)


@pytest.mark.parametrize("item,key,value", [
    ("blocks_to_swap=20", "blocks_to_swap", 20),
    ("target_frames=[81]", "target_frames", [81]),
    ("resolution=[512,512]", "resolution", [512, 512]),
    ("optimizer_type=adamw", "optimizer_type", "adamw"),
    ("learning_rate=2e-4", "learning_rate", 2e-4),
    ("fp8_base=true", "fp8_base", True),
])
def test_set_takes_toml_values(item, key, value):
    spec = profiles.resolve("character", sets=[item])
    assert spec.value(key) == value


@pytest.mark.parametrize("item,message", [
    ("learning_rat=1e-4", "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
    ("network_dim=abc", "'network_dim' must be an integer, got 'abc'"),
    ("network_dim=1.5", "'network_dim' must be an integer, got 1.5"),
    ("mixed_precision=fp8", "'mixed_precision' must be one of no, fp16, bf16; got 'fp8'"),
    ("target_frames=[16]", "frame counts must be 4n+1"),
    ("resolution=[500,500]", "must be a multiple of 16"),
    ("gradient_checkpointing=1", "'gradient_checkpointing' is an on/off flag"),
    ("dit=/x", "'dit' cannot be set: use --dit"),
    ("image_directory=/x", "set by kohyawan"),
    ("novalue", "--set takes KEY=VALUE"),
])
def test_bad_set_values_fail_clearly(item, message):
    with pytest.raises(ConfigError) as err:
        profiles.resolve("character", sets=[item])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_user_profile_dir_overrides_and_extends(tmp_path, monkeypatch):
    user = tmp_path / "cfg" / "kohyawan" / "profiles"
    user.mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (user / "client_a.toml").write_text('extends = "character"\n[train]\nlearning_rate = 1e-4\n')
    spec = profiles.resolve("client_a")
    assert spec.train["learning_rate"] == 1e-4 and spec.origin["train.learning_rate"] == "profile:client_a"
    assert spec.train["network_dim"] == 64 and spec.origin["train.network_dim"] == "profile:character"
    (user / "character.toml").write_text('[train]\nnetwork_dim = 16\nnetwork_alpha = 16.0\n')
    assert profiles.resolve("character").train["network_dim"] == 16


def test_profile_problems_are_one_line(tmp_path, monkeypatch):
    user = tmp_path / "cfg" / "kohyawan" / "profiles"
    user.mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (user / "loop.toml").write_text('extends = "loop"\n')
    (user / "typo.toml").write_text('[trian]\nx = 1\n')
    with pytest.raises(ConfigError, match="extends itself"):
        profiles.resolve("loop")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]; did you mean \[train\]\?"):
        profiles.resolve("typo")
    with pytest.raises(ConfigError, match="unknown profile 'charactr'; did you mean 'character'"):
        profiles.resolve("charactr")


def test_config_show_origin_and_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["config", "show", "--profile", "motion", "--variant", "conservative",
                                 "--origin", "--set", "blocks_to_swap=10"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.strip()[:5] in ("train", "datas")}
    assert lines["train.learning_rate"] == ["8e-05", "variant:conservative"]
    assert lines["train.blocks_to_swap"] == ["10", "set"]
    assert lines["dataset.max_frames"] == ["33", "profile:motion"]
    result = runner.invoke(cli, ["config", "show", "--profile", "motion", "--json"])
    data = json.loads(result.output)
    assert data["version"] == 1 and data["profile"] == "motion"
    values = {v["key"]: v for v in data["values"]}
    assert values["train.network_dim"] == {"key": "train.network_dim", "value": 128, "source": "profile:motion"}


def test_cli_bad_key_is_one_line_exit_2():
    result = CliRunner().invoke(cli, ["config", "show", "--profile", "character", "--set", "netwrok_dim=8"])
    assert result.exit_code == 2
    assert result.output == "error: unknown key 'netwrok_dim'; did you mean 'network_dim'?\n"


def test_mixed_precision_follows_the_checkpoint_dtype(tmp_path):
    from kohyawan.modelfiles import standins as fabricate
    from kohyawan.config.spec import Models

    fp16 = fabricate.write_dit(tmp_path / "low_noise_fp16.safetensors", dtype="fp16")
    bf16 = fabricate.write_dit(tmp_path / "low_noise_bf16.safetensors", dtype="bf16")
    spec = profiles.resolve("character", models=Models(dit=fp16))
    assert spec.train["mixed_precision"] == "fp16" and spec.origin["train.mixed_precision"] == "model-file"
    assert any("low_noise_fp16.safetensors holds fp16 weights" in n for n in spec.notes)
    spec = profiles.resolve("character", models=Models(dit=bf16))
    assert spec.train["mixed_precision"] == "bf16" and spec.origin["train.mixed_precision"] == "base"
    spec = profiles.resolve("character", models=Models(dit=fp16), sets=["mixed_precision=no"])
    assert spec.train["mixed_precision"] == "no"


def test_strings_musubi_would_misread_are_refused():
    with pytest.raises(ConfigError, match="cannot start with a double quote"):
        profiles.resolve("character", sets=['output_name="\\"quoted"'])
    with pytest.raises(ConfigError, match="cannot start with a double quote"):
        profiles.resolve("character", sets=['caption_extension="\\".txt"'])


def test_project_profiles_folder_next_to_the_project_file(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "house.toml").write_text('extends = "style"\n[train]\nmax_train_epochs = 9\n')
    (tmp_path / "kohyawan.toml").write_text('[kohyawan]\nprofile = "house"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="unknown profile 'house'"):
        profiles.resolve("house")  # without the project file, its profiles/ folder is not looked at
    spec = profiles.resolve("house", project_file=profiles.find_project_file())
    assert spec.train["max_train_epochs"] == 9 and spec.train["network_dim"] == 96
