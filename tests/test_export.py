"""kohyawan export: checkpoint choice, naming, metadata, refusals, registry location."""

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from kohyawan.cli import cli
from registry_fakes import header, make_run, write_lora

TODAY = f"{datetime.now(timezone.utc):%Y%m%d}"


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "runs" / "r 1 $(x)", steps=(150, 450, 600, 750, 900), dataset_hash="ds-aaaa")


def test_export_from_a_run_picks_the_guides_checkpoint_and_stamps_metadata(run_dir, tmp_path):
    reg = tmp_path / "reg"
    r = invoke("export", run_dir, "--name", "sarah", "--kind", "character", "--client", "brand-x",
               "--registry", reg, "--notes", "first try ✓ überprüft", "--score", "likeness=8", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["version"] == 1 and res["status"] == "testing" and res["model"] == "character/brand-x/sarah"
    f = res["files"][0]
    assert f["path"] == f"characters/brand-x/wan2.2_character_sarah_v1_{TODAY}.safetensors"
    assert f["step"] == 750 and f["checkpoint"].endswith("checkpoints/r 1 $(x)-step00000750.safetensors")
    meta = header(reg / f["path"])["__metadata__"]
    assert meta["kohyawan.task"] == "t2v-1.3B" and meta["kohyawan.expert"] == "both"
    assert meta["kohyawan.run_id"] == "r 1 $(x)" and meta["kohyawan.profile"] == "character"
    assert meta["kohyawan.dataset_hash"] == "ds-aaaa" and meta["kohyawan.dataset_size"] == "12"
    assert meta["kohyawan.notes"] == "first try ✓ überprüft" and meta["kohyawan.step"] == "750"
    assert json.loads(meta["kohyawan.hyperparameters"])["learning_rate"] == 2e-4
    assert "dit" not in json.loads(meta["kohyawan.hyperparameters"])  # machine paths are not hyperparameters
    assert meta["ss_network_dim"] == "1"  # musubi's own metadata is kept
    # tensors are copied byte for byte when the dtype is kept
    src = run_dir / "checkpoints" / "r 1 $(x)-step00000750.safetensors"
    h_src, h_dst = header(src), header(reg / f["path"])
    assert {k: v for k, v in h_src.items() if k != "__metadata__"} == {k: v for k, v in h_dst.items() if k != "__metadata__"}
    # the rewritten header is a valid safetensors file with identical tensors (what ComfyUI's loader reads)
    from safetensors.torch import load_file
    a, b = load_file(str(src)), load_file(str(reg / f["path"]))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    index = json.loads((reg / "index.json").read_text())
    assert index["schema"] == 1
    v1 = index["models"]["character/brand-x/sarah"]["versions"][0]
    import hashlib
    assert v1["files"][0]["sha256"] == hashlib.sha256((reg / f["path"]).read_bytes()).hexdigest()
    assert v1["scores"] == {"likeness": 8}
    assert not [p for p in reg.rglob(".tmp-*")]


def test_second_export_is_v2_and_final_and_step_choices_work(run_dir, tmp_path):
    reg = tmp_path / "reg"
    assert invoke("export", run_dir, "--name", "sarah", "--kind", "character", "--registry", reg).exit_code == 0
    r = invoke("export", run_dir, "--name", "sarah", "--kind", "character", "--registry", reg,
               "--checkpoint", "final", "--json")
    res = json.loads(r.stdout)
    assert res["version"] == 2 and res["files"][0]["checkpoint"].endswith("checkpoints/r 1 $(x).safetensors")
    assert res["files"][0]["path"] == f"characters/default/wan2.2_character_sarah_v2_{TODAY}.safetensors"
    r = invoke("export", run_dir, "--name", "sarah", "--kind", "character", "--registry", reg, "--checkpoint", "450", "--json")
    assert json.loads(r.stdout)["files"][0]["step"] == 450
    r = invoke("export", run_dir, "--name", "sarah", "--kind", "character", "--registry", reg, "--checkpoint", "451")
    assert r.exit_code == 2 and "no checkpoint at step 451" in r.stderr


def test_run_id_under_runs_folder_is_found(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("export", "r 1 $(x)", "--name", "s", "--kind", "style", "--registry", tmp_path / "reg", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["files"][0]["path"].startswith("styles/default/wan2.2_style_s_v1_")


def test_dtype_conversion(tmp_path):
    src = write_lora(tmp_path / "plain" / "mine.safetensors", dtype="fp32", metadata={"kohyawan.task": "t2v-1.3B"})
    reg = tmp_path / "reg"
    r = invoke("export", src, "--name", "m", "--kind", "motion", "--registry", reg, "--dtype", "bf16", "--json")
    assert r.exit_code == 0, r.stderr
    f = json.loads(r.stdout)["files"][0]
    assert f["dtype"] == "bf16"
    h = header(reg / f["path"])
    assert {v["dtype"] for k, v in h.items() if k != "__metadata__"} == {"BF16"}
    assert h["__metadata__"]["kohyawan.task"] == "t2v-1.3B"
    assert f["bytes"] < src.stat().st_size * 0.6
    import torch
    from safetensors.torch import load_file
    a, b = load_file(str(src)), load_file(str(reg / f["path"]))
    assert a.keys() == b.keys()
    assert all(b[k].dtype == torch.bfloat16 and b[k].equal(a[k].to(torch.bfloat16)) for k in a)
    # and back up to fp32 from the bf16 copy: exact (bf16 -> fp32 loses nothing)
    r = invoke("export", reg / f["path"], "--name", "m", "--kind", "motion", "--registry", reg, "--dtype", "fp32", "--json")
    c = load_file(str(reg / json.loads(r.stdout)["files"][0]["path"]))
    assert all(c[k].dtype == torch.float32 and c[k].equal(b[k].float()) for k in a)


def test_plain_musubi_folder_uses_ss_steps_and_max_train_steps(tmp_path):
    out = tmp_path / "musubi out"
    for s in (200, 400, 600):
        write_lora(out / f"sarah-step{s:08d}.safetensors", seed=s, metadata={"ss_steps": s, "ss_max_train_steps": 800})
    write_lora(out / "sarah-000002.safetensors", seed=1, metadata={"ss_steps": 800, "ss_epoch": 2, "ss_max_train_steps": 800})
    write_lora(out / "sarah.safetensors", seed=2, metadata={"ss_steps": 800, "ss_max_train_steps": 800})
    reg = tmp_path / "reg"
    r = invoke("export", out, "--name", "sarah", "--kind", "character", "--registry", reg, "--json")
    assert r.exit_code == 2 and "--task" in r.stderr and "not recorded" in r.stderr
    r = invoke("export", out, "--name", "sarah", "--kind", "character", "--registry", reg, "--task", "t2v-1.3B", "--json")
    assert r.exit_code == 0, r.stderr
    f = json.loads(r.stdout)["files"][0]
    assert f["step"] == 600 and f["checkpoint"].endswith("sarah-step00000600.safetensors")  # 600 = 75 % of 800
    idx = json.loads((reg / "index.json").read_text())["models"]["character/default/sarah"]["versions"][0]
    assert idx["hyperparameters"]["network_dim"] == 1 and idx["hyperparameters"]["max_train_steps"] == 800


def test_expert_pair_is_one_version_with_high_and_low_files(tmp_path):
    run = make_run(tmp_path / "pair", steps=(700,), task="t2v-A14B", experts=("high", "low"))
    reg = tmp_path / "reg"
    r = invoke("export", run, "--name", "walk", "--kind", "motion", "--registry", reg, "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["version"] == 1
    assert sorted(f["path"].rsplit("/", 1)[1] for f in res["files"]) == [
        f"wan2.2_motion_walk_high_v1_{TODAY}.safetensors", f"wan2.2_motion_walk_low_v1_{TODAY}.safetensors"]
    for f in res["files"]:
        assert header(reg / f["path"])["__metadata__"]["kohyawan.expert"] == f["expert"]


@pytest.mark.parametrize("case", ["not a lora", "truncated", "other size", "wan21 i2v on 2.2", "not safetensors"])
def test_files_that_would_not_load_are_refused(tmp_path, case):
    p = tmp_path / "bad.safetensors"
    task = "t2v-1.3B"
    if case == "not a lora":
        from safetensors.numpy import save_file
        import numpy as np
        save_file({"blocks.0.self_attn.q.weight": np.zeros((4, 4), np.float32)}, str(p))
    elif case == "truncated":
        write_lora(p)
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size - 1000)
    elif case == "other size":
        write_lora(p, task="t2v-1.3B")
        task = "t2v-A14B"
    elif case == "wan21 i2v on 2.2":
        write_lora(p, task="i2v-14B")
        task = "i2v-A14B"
    else:
        p.write_bytes(b"hello world, not a model at all")
    r = invoke("export", p, "--name", "x", "--kind", "style", "--registry", tmp_path / "reg", "--task", task)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and "Traceback" not in r.output
    reg = tmp_path / "reg"
    assert not list(reg.rglob("*.safetensors")) if reg.exists() else True
    if case == "wan21 i2v on 2.2":
        assert "would not load" in r.stderr and "k_img" in r.stderr


def test_task_contradicting_the_run_is_refused(run_dir, tmp_path):
    r = invoke("export", run_dir, "--name", "s", "--kind", "style", "--registry", tmp_path / "reg", "--task", "t2v-A14B")
    assert r.exit_code == 2 and "contradicts" in r.stderr


@pytest.mark.parametrize("opt,value", [("--name", "../../etc"), ("--name", "a/b"), ("--client", "/abs"),
                                       ("--client", ".."), ("--name", "")])
def test_hostile_names_exit_2_and_write_nothing(run_dir, tmp_path, opt, value):
    args = {"--name": "ok", "--client": "ok"}
    args[opt] = value
    r = invoke("export", run_dir, "--kind", "style", "--registry", tmp_path / "reg", *sum(args.items(), ()))
    assert r.exit_code == 2 and ("not allowed" in r.stderr or "empty" in r.stderr)
    assert not (tmp_path / "reg").exists()
    assert not list(tmp_path.parent.glob("etc*"))


def test_registry_location_option_project_file_env_and_none(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("export", run_dir, "--name", "s", "--kind", "style")
    assert r.exit_code == 2 and "no registry given" in r.stderr and "KOHYAWAN_REGISTRY" in r.stderr
    r = invoke("export", run_dir, "--name", "s", "--kind", "style", env={"KOHYAWAN_REGISTRY": str(tmp_path / "from env")})
    assert r.exit_code == 0 and (tmp_path / "from env" / "index.json").is_file()
    (tmp_path / "kohyawan.toml").write_text('[kohyawan]\nprofile = "character"\nregistry = "team reg"\n')
    r = invoke("export", run_dir, "--name", "s", "--kind", "style", env={"KOHYAWAN_REGISTRY": str(tmp_path / "from env")})
    assert r.exit_code == 0 and (tmp_path / "team reg" / "index.json").is_file()
    r = invoke("export", run_dir, "--name", "s", "--kind", "style", "--registry", tmp_path / "explicit")
    assert r.exit_code == 0 and (tmp_path / "explicit" / "index.json").is_file()
    r = invoke("registry", "list", "--registry", tmp_path / "nowhere")
    assert r.exit_code == 2 and "no registry at" in r.stderr


def test_export_output_is_readable(run_dir, tmp_path):
    r = invoke("export", run_dir, "--name", "sarah", "--kind", "character", "--registry", tmp_path / "reg")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0] == "exported character/default/sarah v1 (testing, task t2v-1.3B)"
    assert "auto: step 750 is nearest 70 % of 1000" in r.stdout


def test_dataset_identity_without_a_recorded_hash_is_computed_and_diffed(tmp_path):
    data = tmp_path / "data set"
    (data / ".kohyawan").mkdir(parents=True)
    (data / ".kohyawan" / "manifest.json").write_text("{}")  # kohyawan's own state: not part of the identity
    (data / "a.mp4").write_bytes(b"video")
    (data / "a.txt").write_text("sarah walking")
    reg = tmp_path / "reg"
    run = make_run(tmp_path / "r1", steps=(700,), dataset_dir=data)
    assert invoke("export", run, "--name", "s", "--kind", "character", "--registry", reg).exit_code == 0
    (data / ".kohyawan" / "manifest.json").write_text('{"changed": 1}')
    run2 = make_run(tmp_path / "r2", steps=(700,), dataset_dir=data)
    assert invoke("export", run2, "--name", "s", "--kind", "character", "--registry", reg).exit_code == 0
    (data / "a.txt").write_text("sarah running")  # a caption edit is a different dataset
    run3 = make_run(tmp_path / "r3", steps=(700,), dataset_dir=data, items=13)
    assert invoke("export", run3, "--name", "s", "--kind", "character", "--registry", reg).exit_code == 0
    future = (data / "a.txt").stat().st_mtime + 30
    os.utime(data / "a.mp4", (future, future))  # touched after run3 started: no longer its training data
    assert invoke("export", run3, "--name", "s", "--kind", "character", "--registry", reg).exit_code == 0
    vs = json.loads((reg / "index.json").read_text())["models"]["character/default/s"]["versions"]
    hashes = [v["dataset"]["hash"] for v in vs]
    assert hashes[0] and hashes[0] == hashes[1] != hashes[2] and hashes[3] is None
    assert vs[0]["dataset"]["hash_source"].startswith("computed at export")
    assert vs[3]["dataset"]["hash_source"] == "unknown: the dataset folder changed after the run started"
    assert vs[0]["dataset"]["path"] == str(data) and vs[0]["variant"] == "standard"
    notes = next(reg.rglob("*_training_notes.md")).read_text()
    section_v3 = notes[notes.index("## v3 "):notes.index("## v2 ")]
    assert "dataset `hash`:" in section_v3 and "dataset `size`: 12 → 13" in section_v3
    section_v2 = notes[notes.index("## v2 "):notes.index("## v1 ")]
    assert "No changes in hyperparameters or dataset since v1." in section_v2
    assert "**profile**: character (standard)" in notes


def test_other_ledger_shapes_final_as_a_path_and_plain_train_table(tmp_path):
    run = tmp_path / "old"
    p = write_lora(run / "out" / "x.safetensors", metadata={"ss_steps": 500})
    (run / "run.json").write_text(json.dumps({"id": "old", "task": "t2v-1.3B", "total_steps": 500, "status": "failed",
                                              "checkpoints": [], "final": "out/x.safetensors"}))
    (run / "plan.json").write_text(json.dumps({"train": {"learning_rate": 3e-4}, "dataset": {"num_repeats": 2}}))
    r = invoke("export", run, "--name", "o", "--kind", "domain", "--registry", tmp_path / "reg", "--json")
    assert r.exit_code == 0, r.stderr
    assert "status 'failed'" in r.stderr  # exporting from a failed run works but says so
    v = json.loads((tmp_path / "reg" / "index.json").read_text())["models"]["domain/default/o"]["versions"][0]
    assert v["hyperparameters"] == {"learning_rate": 3e-4} and v["dataset"]["num_repeats"] == 2
    assert v["source"]["step"] == 500


def test_expert_words_in_a_lone_name_are_not_experts_and_expert_overrides(tmp_path):
    out = tmp_path / "out"
    write_lora(out / "sarah_low_light.safetensors", metadata={"ss_steps": 10})
    reg = tmp_path / "reg"
    r = invoke("export", out, "--name", "ll", "--kind", "style", "--registry", reg, "--task", "t2v-1.3B", "--json")
    assert json.loads(r.stdout)["files"][0]["expert"] == "both"
    r = invoke("export", out, "--name", "ll", "--kind", "style", "--registry", reg, "--task", "t2v-1.3B",
               "--expert", "high", "--json")
    f = json.loads(r.stdout)["files"][0]
    assert f["expert"] == "high" and "_ll_high_v2_" in f["path"]


def test_one_half_of_a_pair(tmp_path):
    run = make_run(tmp_path / "pair", steps=(700,), task="t2v-A14B", experts=("high", "low"))
    r = invoke("export", run, "--name", "w", "--kind", "motion", "--registry", tmp_path / "reg", "--expert", "low", "--json")
    assert [f["expert"] for f in json.loads(r.stdout)["files"]] == ["low"]
    r = invoke("export", run, "--name", "w", "--kind", "motion", "--registry", tmp_path / "reg", "--expert", "both")
    assert r.exit_code == 2 and "holds high, low" in r.stderr


def test_musubi_pair_folder_is_recognised_by_file_names(tmp_path):
    out = tmp_path / "out"
    for e in ("high", "low"):
        write_lora(out / f"walk_{e}.safetensors", task="t2v-A14B", metadata={"ss_steps": 10})
    r = invoke("export", out, "--name", "w", "--kind", "motion", "--registry", tmp_path / "reg", "--task", "t2v-A14B",
               "--json")
    assert sorted(f["expert"] for f in json.loads(r.stdout)["files"]) == ["high", "low"]


def test_numpy_casts_match_torch_exactly_including_ties_nan_inf(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    from kohyawan.registry import lorafile

    edge = torch.tensor([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38, 65504.0, 70000.0, 1e-8,
                         float("inf"), float("-inf"), float("nan"), 2.0 ** -133], dtype=torch.float32)
    x = torch.cat([edge, torch.randn(5000) * 10, torch.randn(5000) * 1e-5])
    src = tmp_path / "a.safetensors"
    save_file({"w": x, "h": x.half(), "b": x.bfloat16(), "i": torch.arange(5)}, str(src), metadata={"k": "v"})
    for name, code, tdt in (("bf16", "BF16", torch.bfloat16), ("fp16", "F16", torch.float16), ("fp32", "F32", torch.float32)):
        dst = tmp_path / f"{name}.safetensors"
        lorafile.convert(src, dst, name, {"kohyawan.task": "t"})
        got, ref = load_file(str(dst)), {"w": x, "h": x.half(), "b": x.bfloat16()}
        for k, t in ref.items():
            want = t.to(tdt)
            assert got[k].dtype == tdt
            assert torch.equal(got[k].isnan(), want.isnan()), (name, k)
            ok = ~want.isnan()
            assert torch.equal(got[k][ok], want[ok]), (name, k)
        assert torch.equal(got["i"], torch.arange(5))
        assert lorafile.metadata_of(dst) == {"k": "v", "kohyawan.task": "t"}


def test_a_moved_run_folder_still_finds_its_checkpoints(tmp_path):
    run = make_run(tmp_path / "a" / "r", steps=(700,))
    moved = tmp_path / "b" / "r"
    moved.parent.mkdir()
    run.rename(moved)  # run.json still names /…/a/r/checkpoints/…
    r = invoke("export", moved, "--name", "m", "--kind", "style", "--registry", tmp_path / "reg", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["files"][0]["checkpoint"] == str(moved / "checkpoints" / "r-step00000700.safetensors")


def test_a_failed_write_leaves_no_temp_files(tmp_path, monkeypatch):
    from kohyawan.registry import lorafile

    src = write_lora(tmp_path / "in" / "x.safetensors", metadata={"kohyawan.task": "t2v-1.3B"})
    reg = tmp_path / "reg"
    assert invoke("export", src, "--name", "a", "--kind", "style", "--registry", reg).exit_code == 0
    real = lorafile.rewrite_metadata

    def disk_full(s, d, meta):  # a full disk cannot be had here: write half, then fail like ENOSPC does
        real(s, d, meta)
        with open(d, "r+b") as f:
            f.truncate(1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lorafile, "rewrite_metadata", disk_full)
    r = invoke("export", src, "--name", "a", "--kind", "style", "--registry", reg)
    assert r.exit_code == 1 and r.stderr == "error: No space left on device\n"
    assert not list(reg.rglob(".tmp-*"))
    assert [v["version"] for v in json.loads((reg / "index.json").read_text())["models"]["style/default/a"]["versions"]] == [1]
