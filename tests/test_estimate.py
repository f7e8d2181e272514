"""The estimator over real resolved profiles and the core's fallback ladder."""

import json
from pathlib import Path

import pytest

from kohyawan.estimate import plan as est
from kohyawan.estimate import offers as gpus_mod
from kohyawan.estimate import disk, memory, observations
from kohyawan.config import profiles
from kohyawan.run import rungs
from kohyawan.errors import BadInput, ConfigError


def make_dataset(root: Path, clips: int = 40) -> Path:
    videos = root / "videos"
    videos.mkdir(parents=True)
    for i in range(clips):
        (videos / f"clip {i}.mp4").write_bytes(b"")
        (videos / f"clip {i}.txt").write_text("a person walking", encoding="utf-8")
    return root


def spec_for(profile="character", sets=(), expert="both", task="t2v-A14B", dataset=None):
    return profiles.resolve(profile, task=task, expert=expert, sets=sets, dataset_dir=dataset)


def test_gpu_table_lookup_by_key_nvml_name_and_substring():
    table = gpus_mod.load_gpus()
    assert gpus_mod.find_gpu("rtx4090", table).vram_gib == pytest.approx(23.99)
    assert gpus_mod.find_gpu("NVIDIA GeForce RTX 4090", table).key == "rtx4090"
    assert gpus_mod.find_gpu("a100-40", table).key == "a100-40gb"
    runpod = [o for o in gpus_mod.find_gpu("4090", table).offers if o.provider == "RunPod"][0]
    assert runpod.usd_per_hour == 0.69 and runpod.source == "guide"
    assert [o.usd_per_hour for o in gpus_mod.find_gpu("a100-40gb", table).offers] == [1.10]
    with pytest.raises(BadInput, match="ambiguous"):
        gpus_mod.find_gpu("a100", table)
    with pytest.raises(BadInput, match="unknown GPU"):
        gpus_mod.find_gpu("voodoo5", table)


def test_user_gpu_table_overrides_the_builtin(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg" / "kohyawan"
    cfg.mkdir(parents=True)
    (cfg / "gpus.toml").write_text('[gpu.rtx4090]\nvram_gib = 23.99\nbf16_tflops = 165\n'
                                   'offers = [{ provider = "Home", usd_per_hour = 0.1 }]\n'
                                   '[gpu.mycard]\nvram_gib = 96\nbf16_tflops = 500\nnames = ["My Card"]\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    table = gpus_mod.load_gpus()
    assert [o.provider for o in table["rtx4090"].offers] == ["Home"]
    assert gpus_mod.find_gpu("My Card", table).vram_gib == 96
    (cfg / "gpus.toml").write_text("[gpu.broken]\nbf16_tflops = 1\n")
    with pytest.raises(ConfigError, match="broken"):
        gpus_mod.load_gpus()


def test_ladder_on_a_24gb_gpu_starts_at_the_first_rung_that_fits_with_margin(tmp_path):
    spec = spec_for(dataset=make_dataset(tmp_path / "d"))
    gpu = gpus_mod.find_gpu("rtx4090")
    ladder = est.ladder_estimates(spec, rungs.vram_rungs(spec), rungs.apply, gpu=gpu, total_steps=600)
    vram = [e.vram_gib for e in ladder.estimates]
    assert vram == sorted(vram, reverse=True)                   # every rung relieves VRAM
    first = ladder.first_fit
    assert first > 0 and ladder.estimates[first].fits
    assert all(not e.fits for e in ladder.estimates[:first])
    chosen = ladder.estimates[first]
    assert chosen.vram_gib + chosen.margin_gib <= gpu.vram_gib
    # the same answer through the function `kohyawan run` calls
    index, rung, estimate = est.first_fitting_rung(spec, gpu.vram_gib, gpu=gpu, total_steps=600)
    assert index == first and rung == ladder.rungs[first - 1] and estimate.label == rung.name
    assert estimate.vram_gib == pytest.approx(chosen.vram_gib)


def test_first_fitting_rung_is_the_base_on_a_big_gpu_and_none_when_nothing_fits():
    spec = spec_for(expert="low", sets=("fp8_base=true",))
    index, rung, e = est.first_fitting_rung(spec, 80)
    assert (index, rung, e.label) == (0, None, "base") and e.fits
    index, rung, e = est.first_fitting_rung(spec, 4)
    assert index == -1 and rung is None and e.fits is False


def test_ram_limit_is_part_of_fitting():
    spec = spec_for(expert="low", sets=("blocks_to_swap=39", "fp8_base=true"))
    e = est.estimate_spec(spec, vram_gib=80, ram_gib=8)
    assert e.fits_vram and e.fits_ram is False and e.fits is False
    assert est.estimate_spec(spec, vram_gib=80, ram_gib=128).fits


def test_more_frames_resolution_or_rank_never_lowers_the_estimate():
    gpu = gpus_mod.find_gpu("h100-80gb")
    for key, values in (("target_frames", ["[9]", "[17]", "[33]", "[81]"]),
                        ("resolution", ["[256,256]", "[512,512]", "[768,768]"]),
                        ("network_dim", ["16", "32", "64", "128"])):
        prev = None
        for v in values:
            e = est.estimate_spec(spec_for(sets=(f"{key}={v}",)), gpu=gpu, total_steps=1000, items=100)
            cur = (e.vram_gib, e.ram_gib, e.s_per_step, e.hours, e.disk_gib["total"])
            if prev:
                assert all(c >= p for c, p in zip(cur, prev)), (key, v)
            prev = cur


def test_time_cost_and_disk():
    spec = spec_for(expert="low", sets=("fp8_base=true", "blocks_to_swap=20"))
    offers = list(gpus_mod.load_gpus().values())
    e = est.estimate_spec(spec, gpu=gpus_mod.find_gpu("rtx4090"), total_steps=1000, items=50, offers=offers)
    assert e.hours == pytest.approx((1000 * e.s_per_step + est.STARTUP_SECONDS) / 3600)
    assert e.costs and [c.usd for c in e.costs] == sorted(c.usd for c in e.costs)
    runpod = [c for c in e.costs if c.gpu == "rtx4090" and c.provider == "RunPod"][0]
    assert runpod.usd == pytest.approx(e.hours * 0.69)
    vast = [c for c in e.costs if c.gpu == "rtx4090" and c.provider == "Vast.ai"][0]
    assert (vast.usd, vast.usd_max) == (pytest.approx(e.hours * 0.40), pytest.approx(e.hours * 0.60))
    assert all(gpus_mod.load_gpus()[c.gpu].vram_gib >= e.vram_gib + e.margin_gib for c in e.costs)
    inp = memory.inputs_from_values(spec.train, spec.dataset, spec.task, spec.expert)
    assert e.disk_gib["latent_cache"] == pytest.approx(50 * disk.latent_cache_bytes(inp) / memory.GIB)
    # saves every 500 steps plus the final file, each with a state (base profile: save_state = true)
    assert e.disk_gib["checkpoints"] == pytest.approx(3 * disk.lora_file_bytes(inp, 2) / memory.GIB)
    assert e.disk_gib["states"] == pytest.approx(3 * disk.state_bytes(inp) / memory.GIB)
    seq = est.estimate_spec(spec_for(expert="sequential", sets=("fp8_base=true", "blocks_to_swap=20")),
                            gpu=gpus_mod.find_gpu("rtx4090"), total_steps=1000, items=50)
    assert seq.hours == pytest.approx(2 * e.hours)               # two chained trainings
    assert seq.disk_gib["checkpoints"] == pytest.approx(2 * e.disk_gib["checkpoints"])


def write_run(runs: Path, name: str, spec, attempts, step_times, gpu="NVIDIA GeForce RTX 4090"):
    run = runs / name
    run.mkdir(parents=True)
    values = [{"key": f"train.{k}", "value": v, "source": "x"} for k, v in spec.train.items()]
    values += [{"key": f"dataset.{k}", "value": v, "source": "x"} for k, v in spec.dataset.items()]
    (run / "plan.json").write_text(json.dumps({"version": 1, "task": spec.task, "expert": spec.expert,
                                               "values": values}))
    (run / "run.json").write_text(json.dumps({"version": 1, "id": name, "gpu": {"name": gpu},
                                              "attempts": attempts}))
    with open(run / "metrics.jsonl", "w") as fh:
        for n, times in step_times.items():
            for i, t in enumerate(times):
                fh.write(json.dumps({"step": i + 1, "s_per_it": t, "attempt": n}) + "\n")


def test_observed_runs_on_the_same_gpu_correct_the_estimate_and_say_so(tmp_path):
    spec = spec_for(expert="low", sets=("fp8_base=true", "blocks_to_swap=20"))
    gpu = gpus_mod.find_gpu("rtx4090")
    plain = est.estimate_spec(spec, gpu=gpu, total_steps=100)
    runs = tmp_path / "runs"
    # attempt 1 ran out of memory (its peak is not a measurement), attempt 2 ran at blocks_to_swap=24
    write_run(runs, "r1", spec, [
        {"n": 1, "outcome": "oom_vram", "changes": {}, "peak_vram_gb": 23.9},
        {"n": 2, "outcome": "succeeded", "changes": {"train.blocks_to_swap": 24}, "peak_vram_gb": 15.0}],
        {1: [50.0], 2: [99.0, 80.0, 2 * plain.s_per_step, 2 * plain.s_per_step, 2 * plain.s_per_step]})
    write_run(runs, "other-gpu", spec, [{"n": 1, "outcome": "succeeded", "changes": {}, "peak_vram_gb": 5.0}],
              {1: [1.0] * 5}, gpu="NVIDIA H100 80GB HBM3")
    (runs / "junk").mkdir()
    (runs / "junk" / "run.json").write_text("{not json")
    obs = observations.load_observations(runs)
    assert len(obs) == 3
    e = est.estimate_spec(spec, gpu=gpu, total_steps=100, observations=obs)
    seen = memory.inputs_from_values({**spec.train, "blocks_to_swap": 24}, spec.dataset, spec.task, spec.expert)
    factor = 15.0 / memory.vram(seen).total_gib
    assert e.corrections.vram_runs == 1 and e.corrections.vram_factor == pytest.approx(factor)
    assert e.vram_gib == pytest.approx(plain.vram_gib * factor)
    assert e.corrections.time_runs == 1
    # the run's steps took twice what the model says for its own settings (blocks_to_swap=24): the estimate for
    # these settings (20) is the model's figure for them, doubled
    at_24 = est.estimate_spec(spec.with_changes({"train.blocks_to_swap": 24}, "test"), gpu=gpu, total_steps=100)
    assert e.s_per_step == pytest.approx(plain.s_per_step * 2 * plain.s_per_step / at_24.s_per_step, rel=0.02)
    assert any("RTX 4090" in n for n in e.corrections.notes)
    # a different GPU, or settings far from the observed ones, are not corrected
    assert est.estimate_spec(spec, gpu=gpus_mod.find_gpu("l40s"), observations=obs).corrections.notes == ()
    far = spec_for(expert="low", sets=("fp8_base=true", "blocks_to_swap=20", "target_frames=[81]"))
    assert est.estimate_spec(far, gpu=gpu, observations=obs).corrections.vram_runs == 0


def test_corrections_are_clamped():
    inp = memory.MemoryInputs(fp8_base=True, grad_ckpt=True, frames=17, width=512, height=512)
    wild = observations.Observation("r", 1, "NVIDIA GeForce RTX 4090", inp, 500.0, None)
    corr = observations.fit_corrections([wild], inp, gpu_name="NVIDIA GeForce RTX 4090")
    assert corr.vram_factor == observations.VRAM_CLAMP[1]


def test_estimate_to_dict_is_json_ready():
    e = est.estimate_spec(spec_for(), gpu=gpus_mod.find_gpu("h100-80gb"), total_steps=10, items=3,
                          offers=list(gpus_mod.load_gpus().values()))
    doc = json.loads(json.dumps(e.to_dict()))
    for key in ("label", "vram_gib", "vram_parts", "ram_gib", "s_per_step", "hours", "disk_gib", "costs", "fits",
                "corrections", "margin_gib"):
        assert key in doc
