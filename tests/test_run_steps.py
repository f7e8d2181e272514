"""The attempt loop's decisions, without processes: stage records, rung inheritance, the start rung, cache
checks, an attempt's outcome, the resume point after an outcome, and what is said between attempts."""

from dataclasses import dataclass

import pytest

from kohyawan.run import startrung, steps
from kohyawan.run.ladder import HALF_LR, Next, Saved, decide
from test_ladder import R   # a rung: name, changes, needs_recache, keeps_state


@dataclass(frozen=True)
class St:
    name: str


WATCHDOG = {"loss_spike_patience": 20, "loss_spike_window": 50}


def test_a_stage_record_is_found_or_added_once():
    data = {}
    rec = steps.stage_record(data, "train_high")
    assert rec == {"name": "train_high", "status": "pending"} and data["stages"] == [rec]
    rec["status"] = "running"
    assert steps.stage_record(data, "train_high") is rec and len(data["stages"]) == 1
    steps.stage_record(data, "train_low")
    assert [r["name"] for r in data["stages"]] == ["train_high", "train_low"]


def test_the_second_expert_inherits_the_rungs_the_first_one_needed():
    high = {"name": "train_high", "status": "done", "rungs": ["fp8_base", "blocks_to_swap=20", "fewer_workers"]}
    low = {"name": "train_low", "status": "pending"}
    stages = [{"name": "cache_latents", "status": "done", "rungs": ["x"]}, high, low]
    # a rung the second expert's ladder does not have is dropped
    assert steps.inherited_rungs(stages, low, {"fp8_base", "blocks_to_swap=20"}) == \
        ("train_high", ["fp8_base", "blocks_to_swap=20"])
    # an unfinished or the stage's own record gives nothing
    assert steps.inherited_rungs([dict(high, status="failed"), low], low, {"fp8_base"}) == (None, [])
    assert steps.inherited_rungs([high], high, {"fp8_base"}) == (None, [])
    # the last finished training stage wins
    later = {"name": "train_mid", "status": "done", "rungs": ["fp8_base"]}
    assert steps.inherited_rungs([high, later, low], low, {"fp8_base", "blocks_to_swap=20"}) == \
        ("train_mid", ["fp8_base"])


def test_the_estimate_picks_the_start_rung_and_says_why():
    vram = [R("gradient_checkpointing"), R("fp8_base"), R("blocks_to_swap=10")]
    assert startrung.start_rungs(0, vram) == []
    assert startrung.start_rungs(-1, vram) == []
    assert startrung.start_rungs(2, vram) == ["gradient_checkpointing", "fp8_base"]
    assert startrung.start_message(0, None, 10.04, 24.0) == \
        "estimate: the profile's settings fit 24 GiB (predicted peak 10.0 GiB)"
    assert "nothing on the ladder fits 12 GiB (last rung 13.2 GiB)" in startrung.start_message(-1, None, 13.2, 12.0)
    assert startrung.start_message(2, "fp8_base", 9.5, 12.0).startswith(
        "estimate: starting at rung fp8_base (predicted peak 9.5 GiB of 12)")


def test_first_move_resumes_the_newest_save_a_state_before_weights():
    assert steps.first_move([], [], 1.0) == Next("restart", "first attempt", (), None, 0, None, None, 1.0)
    saves = [Saved(5, "/s5", "/w5"), Saved(10, None, "/w10"), Saved(10, "/s10", None)]
    n = steps.first_move(saves, ["fp8_base"], 0.5)
    assert (n.action, n.start_step, n.resume_state, n.network_weights, n.rungs, n.lr_scale) == \
        ("resume", 10, "/s10", None, ("fp8_base",), 0.5)
    n = steps.first_move([Saved(10, None, "/w10")], [], 1.0)
    assert n.network_weights == "/w10" and n.resume_state is None and "fresh optimizer" in n.reason


def test_a_save_of_one_step_arrives_in_two_parts_and_makes_one_entry():
    saves = []
    steps.record_save(saves, Saved(5, None, "/w5"))
    steps.record_save(saves, Saved(5, "/s5", None))
    steps.record_save(saves, Saved(10, "/s10", None))
    assert saves == [{"step": 5, "state_dir": "/s5", "weights": "/w5"},
                     {"step": 10, "state_dir": "/s10", "weights": None}]
    assert steps.saves_of({"saves": saves}) == [Saved(5, "/s5", "/w5"), Saved(10, "/s10", None)]


def test_cache_checks_force_the_latents_only_for_a_rung_that_needs_them():
    stages = [St("cache_latents"), St("cache_text_encoder"), St("train")]
    plain = Next("resume", "", ("fp8_base",), "fp8_base")
    assert [(s.name, f) for s, f in steps.cache_checks(stages, plain)] == \
        [("cache_latents", False), ("cache_text_encoder", False)]
    frames = Next("resume", "", ("fewer_frames",), "fewer_frames", recache=True)
    assert [(s.name, f) for s, f in steps.cache_checks(stages, frames)] == \
        [("cache_latents", True), ("cache_text_encoder", False)]


def test_attempt_overrides_name_the_remaining_steps_and_the_resume_point():
    assert steps.attempt_overrides("c-a01", 20, Next("restart", "", start_step=0)) == \
        {"output_name": "c-a01", "max_train_steps": 20}
    assert steps.attempt_overrides("c-a02", 20, Next("resume", "", start_step=5, resume_state="/s5")) == \
        {"output_name": "c-a02", "max_train_steps": 15, "resume": "/s5"}
    assert steps.attempt_overrides("c-a03", 20, Next("resume", "", start_step=5, network_weights="/w5")) == \
        {"output_name": "c-a03", "max_train_steps": 15, "network_weights": "/w5"}


@pytest.mark.parametrize("kw,expected", [
    (dict(stopped_for="stall", stop_reason="no progress for 10 min", exit_code=-2, model_saved=False, reached=7),
     ("stall", "no progress for 10 min", False)),
    (dict(stopped_for=None, stop_reason=None, exit_code=0, model_saved=True, reached=20),
     ("succeeded", "trained to step 20", True)),
    (dict(stopped_for=None, stop_reason=None, exit_code=0, model_saved=True, reached=18),
     ("crashed", "the trainer stopped at step 18, expected 20", True)),
    (dict(stopped_for=None, stop_reason=None, exit_code=0, model_saved=False, reached=20),
     ("crashed", "the trainer exited without saving the model", False)),
    (dict(stopped_for=None, stop_reason=None, exit_code=-9, model_saved=False, reached=7),
     ("oom_ram", None, False)),
])
def test_an_attempts_outcome(kw, expected):
    outcome, reason, finished = steps.attempt_outcome(tail=["steps:  35%| 7/20 [00:07<00:13, avr_loss=0.1]"],
                                                      total=20, **kw)
    assert (outcome, finished) == (expected[0], expected[2])
    assert reason == expected[1] if expected[1] else "SIGKILL" in reason


def test_a_cuda_oom_in_the_log_is_an_oom_vram_outcome():
    tail = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
            "of 23.99 GiB of which 1.00 GiB is free."]
    outcome, reason, finished = steps.attempt_outcome(stopped_for=None, stop_reason=None, exit_code=1, tail=tail,
                                                      model_saved=False, reached=6, total=20)
    assert outcome == "oom_vram" and "CUDA out of memory" in reason and not finished


def test_bad_from_is_the_nan_step_or_the_start_of_the_spike():
    assert steps.bad_from("nan", (8, float("nan")), 9, WATCHDOG) == 8
    assert steps.bad_from("nan", None, 9, WATCHDOG) is None
    assert steps.bad_from("loss_spike", None, 100, WATCHDOG) == 100 - 20 - 25
    assert steps.bad_from("oom_vram", (8, float("nan")), 9, WATCHDOG) is None


def test_the_resume_point_after_an_outcome_skips_saves_from_after_the_loss_went_bad():
    saves = [Saved(5, "/s5", "/w5"), Saved(10, None, "/w10"), Saved(15, "/s15", None), Saved(20, None, None)]
    latest, good = steps.resume_points(saves, None)
    assert latest == good == Saved(15, "/s15", None)       # the point with nothing to load is not usable
    latest, good = steps.resume_points(saves, 12)
    assert latest == Saved(15, "/s15", None) and good == Saved(10, None, "/w10")
    assert steps.resume_points(saves, 5) == (Saved(15, "/s15", None), None)
    # what the ladder then does with them: a NaN resumes from the good one at half the learning rate
    nxt = decide("nan", saved=latest, good_saved=Saved(10, None, "/w10"))
    assert (nxt.start_step, nxt.network_weights, nxt.lr_scale, nxt.new_rung) == (10, "/w10", 0.5, HALF_LR)


def test_earlier_outcomes_are_this_stages_before_the_last():
    attempts = [{"stage": "train_high", "outcome": "oom_vram"}, {"stage": "train_high", "outcome": "succeeded"},
                {"stage": "train_low", "outcome": "stall"}, {"stage": "train_low", "outcome": "nan"}]
    assert steps.earlier_outcomes(attempts, "train_low") == ["stall"]
    assert steps.earlier_outcomes(attempts, "train_high") == ["oom_vram"]
    assert steps.earlier_outcomes([], "train") == []


def test_rung_changes_for_the_attempt_record():
    """The changes of the rungs the attempt really runs with, in order, and the LR scale it really has."""
    applied = [R("fp8_base", {"train.fp8_base": True, "train.fp8_scaled": True}),
               R("blocks_to_swap=20", {"train.blocks_to_swap": 20}),
               R("fewer_blocks_to_swap=10", {"train.blocks_to_swap": 10})]
    assert steps.rung_changes(applied, 0.25) == {"train.fp8_base": True, "train.fp8_scaled": True,
                                                 "train.blocks_to_swap": 10, "lr_scale": 0.25}
    assert steps.rung_changes([]) == {}


def test_what_is_said_between_attempts_and_how_a_stop_is_recorded():
    nxt = Next("resume", "CUDA out of memory: next rung fp8_base; resuming the saved state at step 5", ("fp8_base",),
               "fp8_base", 5, "/s5")
    line, text = steps.ladder_messages(1, "oom_vram", "torch.OutOfMemoryError: CUDA out of memory. Including "
                                       "non-PyTorch memory, this process has 23 GiB", nxt)
    assert line == ("attempt 1 ended: oom_vram (torch.OutOfMemoryError: CUDA out of memory.); CUDA out of memory: "
                    "next rung fp8_base; resuming the saved state at step 5")
    assert text.startswith("oom_vram: torch.OutOfMemoryError") and text.endswith(". Next: " + nxt.reason)
    assert steps.stop_status("interrupted") == "stopped" and steps.stop_status("oom_vram") == "failed"


def test_open_record_keeps_what_a_resumed_stage_had():
    rec = {"name": "train", "status": "failed", "lr_scale": 0.5, "saves": [{"step": 5, "state_dir": "/s5",
                                                                            "weights": None}]}
    steps.open_record(rec)
    assert rec["status"] == "running" and rec["lr_scale"] == 0.5 and len(rec["saves"]) == 1
    fresh = {"name": "train"}
    steps.open_record(fresh)
    assert fresh == {"name": "train", "status": "running", "lr_scale": 1.0, "saves": []}


def test_gpu_memory_caps_what_a_real_run_plans_for_and_is_recorded():
    from types import SimpleNamespace

    from kohyawan.run.startrung import planned_gib

    real = SimpleNamespace(rehearse=False, gpu_memory_gb=23.5)
    data = {"gpu": {"name": "NVIDIA H200", "total_gib": 139.8}}
    assert planned_gib(real, data) == 23.5 and data["gpu_budget_gib"] == 23.5
    bigger = {"gpu": {"name": "NVIDIA H200", "total_gib": 139.8}}
    assert planned_gib(SimpleNamespace(rehearse=False, gpu_memory_gb=500), bigger) == 139.8   # never more than the card
    unknown = {}
    assert planned_gib(real, unknown) == 23.5                          # no NVML: the user's figure
    plain = {"gpu": {"name": "NVIDIA H200", "total_gib": 139.8}}
    assert planned_gib(SimpleNamespace(rehearse=False, gpu_memory_gb=None), plain) == 139.8
    assert "gpu_budget_gib" not in plain
    virtual = {"gpu": {"name": "kohyawan rehearsal (virtual GPU)", "total_gib": 12.0}}
    assert planned_gib(SimpleNamespace(rehearse=True, gpu_memory_gb=12), virtual) == 12.0 and "gpu_budget_gib" not in virtual
