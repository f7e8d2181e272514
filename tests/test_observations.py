"""What the estimator learns from run folders and calibrations (issue 11 item 3): the right GPU, the trainer's own
allocator peak where NVML saw nothing, each attempt's own settings, and an OOM as 'did not fit'."""

import json
import sys
from pathlib import Path

import pytest

from kohyawan.config import profiles
from kohyawan.estimate import memory, observations
from kohyawan.estimate import plan as est
from kohyawan.run import lrschedule

RTX = "NVIDIA GeForce RTX 4090"


def spec_for(*sets):
    return profiles.resolve("character", task="t2v-A14B", expert="low", sets=list(sets))


def plan_doc(spec):
    values = [{"key": f"train.{k}", "value": v, "source": "x"} for k, v in spec.train.items()]
    values += [{"key": f"dataset.{k}", "value": v, "source": "x"} for k, v in spec.dataset.items()]
    return {"version": 1, "task": spec.task, "expert": spec.expert, "values": values}


def write_run(folder: Path, spec, attempts, *, gpu=None, calibration=None, attempt_plans=None):
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(plan_doc(spec)))
    doc = {"version": 1, "id": folder.name, "gpu": gpu or {"name": RTX, "total_gib": 23.99}, "attempts": attempts}
    if calibration:
        doc["calibration"] = calibration
    (folder / "run.json").write_text(json.dumps(doc))
    for n, other in (attempt_plans or {}).items():
        (folder / "attempts" / f"{n:02d}").mkdir(parents=True)
        (folder / "attempts" / f"{n:02d}" / "plan.json").write_text(json.dumps(plan_doc(other)))


def test_an_oom_at_settings_predicted_to_fit_keeps_them_from_fitting_again(tmp_path):
    spec = spec_for("fp8_base=true", "blocks_to_swap=10")
    plain = est.estimate_spec(spec, vram_gib=23.99)
    assert plain.fits_vram                                           # the model said it fits
    write_run(tmp_path / "runs" / "r1", spec, [{"n": 1, "outcome": "oom_vram", "changes": {}, "peak_vram_gb": 23.5}])
    obs = observations.load_observations(tmp_path / "runs")
    assert [(o.oom_vram, o.peak_vram_gib, o.gpu_total_gib) for o in obs] == [(True, None, 23.99)]
    learnt = est.estimate_spec(spec, vram_gib=23.99, observations=obs, gpu_name=RTX)
    assert learnt.vram_gib == pytest.approx(23.99) and learnt.fits_vram is False
    assert "ran out of GPU memory" in learnt.corrections.notes[0]
    # an OOM where the model already said 'does not fit' teaches nothing
    big = spec_for()
    write_run(tmp_path / "runs2" / "r1", big, [{"n": 1, "outcome": "oom_vram", "changes": {}}])
    quiet = est.estimate_spec(big, observations=observations.load_observations(tmp_path / "runs2"), gpu_name=RTX)
    assert quiet.corrections.notes == ()


def test_without_nvml_the_trainers_allocator_peak_counts_with_the_cuda_context(tmp_path):
    spec = spec_for("fp8_base=true", "blocks_to_swap=10")
    write_run(tmp_path / "runs" / "r1", spec, [
        {"n": 1, "outcome": "succeeded", "changes": {}, "peak_vram_gb": None,
         "allocator_peak_gb": {"allocated": 15.0, "reserved": 17.0, "steps": 40, "ranks": 1}},
        {"n": 2, "outcome": "succeeded", "changes": {}, "peak_vram_gb": 19.5,
         "allocator_peak_gb": {"allocated": 15.0, "reserved": 17.0, "steps": 40, "ranks": 1}}])
    obs = observations.load_observations(tmp_path / "runs")
    assert [o.peak_vram_gib for o in obs] == [17.0 + memory.CUDA_CONTEXT_GIB, 19.5]   # NVML first when it saw it


def test_each_attempt_is_read_with_its_own_settings_and_calibrations_too(tmp_path):
    base, deeper = spec_for("fp8_base=true", "blocks_to_swap=10"), spec_for("fp8_base=true", "blocks_to_swap=30")
    # the run's plan.json is the last attempt's; attempt 1 ran with its own (a copy in attempts/01)
    write_run(tmp_path / "runs" / "r1", deeper, [{"n": 1, "outcome": "oom_vram", "changes": {}},
                                                 {"n": 2, "outcome": "succeeded", "changes": {}, "peak_vram_gb": 9.0}],
              attempt_plans={1: base, 2: deeper})
    write_run(tmp_path / "runs" / "calibrations" / "c1", base,
              [{"n": 1, "outcome": "succeeded", "changes": {}, "peak_vram_gb": 18.0}], calibration={"mode": "start"})
    obs = observations.load_observations(tmp_path / "runs")
    assert [(o.run_id, o.inputs.blocks_to_swap, o.calibration) for o in obs] == [
        ("r1", 10, False), ("r1", 30, False), ("c1", 10, True)]


def test_the_scheduler_hands_torchs_peaks_to_kohyawan_after_every_step(tmp_path, monkeypatch):
    """kohyawan_lr.ContinuedLR as musubi-tuner steps it; torch here has no CUDA, so its four allocator queries
    stand in for a GPU (the only part that cannot run here)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(lrschedule.pyshim_dir()))
    import kohyawan_lr
    import kohyawan_mem

    peak = {"now": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: peak["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda dev=None: peak["now"] + 2**30)
    folder = tmp_path / "attempts" / "01" / "allocator"
    monkeypatch.setenv(kohyawan_mem.ENV, str(folder))
    monkeypatch.setenv("RANK", "1")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = kohyawan_lr.ContinuedLR(opt, kind="cosine", total_steps=10)
    for step in range(1, 4):
        peak["now"] = step * 2**30
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    assert json.loads((folder / "rank1.json").read_text())["step"] == 3
    assert kohyawan_mem.read(folder) == {"allocated": 3.0, "reserved": 4.0, "steps": 3, "ranks": 1}
    monkeypatch.setenv(kohyawan_mem.ENV, str(folder / "rank1.json" / "not-a-folder"))
    sched.step()                                     # a failure to record never stops training
    monkeypatch.delenv(kohyawan_mem.ENV)
    monkeypatch.undo()
    assert kohyawan_mem.read(tmp_path / "nothing") is None


def test_without_cuda_the_recorder_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from kohyawan.trainer.pyshim import kohyawan_mem

    monkeypatch.setenv(kohyawan_mem.ENV, str(tmp_path / "a"))
    kohyawan_mem.record(1)          # this machine's torch has no CUDA
    assert not (tmp_path / "a").exists()


def test_an_oom_under_a_gpu_memory_budget_counts_against_the_budget_not_the_card(tmp_path):
    """A run started with --gpu-memory planned for part of a bigger card: its OOM says the settings needed more
    than that part, not more than the whole card."""
    spec = spec_for("fp8_base=true", "blocks_to_swap=10")
    write_run(tmp_path / "runs" / "r1", spec, [{"n": 1, "outcome": "oom_vram", "changes": {}}],
              gpu={"name": "NVIDIA H200", "total_gib": 139.8})
    run_json = tmp_path / "runs" / "r1" / "run.json"
    doc = json.loads(run_json.read_text())
    (obs,) = observations.load_observations(tmp_path / "runs")
    assert obs.gpu_total_gib == 139.8
    doc["gpu_budget_gib"] = 23.5
    run_json.write_text(json.dumps(doc))
    (obs,) = observations.load_observations(tmp_path / "runs")
    assert obs.oom_vram and obs.gpu_total_gib == 23.5


def test_a_mixed_runs_step_time_is_compared_with_the_same_epoch_average_the_estimate_makes():
    """The estimate averages step time over an epoch's batches (images cheap, long clips dear); what a run took
    per step is compared with that same average for what the run trained on, not with its largest batch."""
    from kohyawan.estimate import offers, steptime, workload

    gpu = offers.load_gpus()["h200"]
    work = workload.Workload((workload.Shape(0, "image", 1280, 720, 1, 20, 1),
                              workload.Shape(1, "video", 832, 480, 81, 10, 1)), "report")
    spec = spec_for("fp8_base=true", "blocks_to_swap=20")
    inputs = memory.inputs_from_values(spec.train, spec.dataset, spec.task, spec.expert, work.peak())
    exact = steptime.mean_step_seconds(inputs, work, gpu)          # the run took exactly what the model says
    peak_only = steptime.step_seconds(inputs, gpu.bf16_tflops, gpu.mfu, gpu.h2d_gbps)["total"]
    assert exact < 0.8 * peak_only                                 # the images make the average much cheaper
    seen = observations.Observation("r1", 1, gpu.names[0], inputs, None, exact, work=work)
    corr = observations.fit_corrections([seen], inputs, gpu_name=gpu.names[0], gpu=gpu)
    assert corr.time_runs == 1 and corr.time_factor == pytest.approx(1.0, abs=0.01)
    slower = observations.Observation("r1", 1, gpu.names[0], inputs, None, 1.5 * exact, work=work)
    assert observations.fit_corrections([slower], inputs, gpu_name=gpu.names[0], gpu=gpu).time_factor == \
        pytest.approx(1.5, abs=0.01)
