from dataclasses import dataclass, field

from kohyawan.run.ladder import HALF_LR, Saved, decide


@dataclass(frozen=True)
class R:
    name: str
    changes: dict = field(default_factory=dict)
    needs_recache: bool = False
    keeps_state: bool = True


VRAM = [R("fp8_base", {"train.fp8_base": True}), R("blocks_to_swap=20", {"train.blocks_to_swap": 20}),
        R("fewer_frames", {"dataset.target_frames": [9]}, needs_recache=True),
        R("lower_rank", {"train.network_dim": 16}, keeps_state=False)]
RAM = [R("no_pinned_memory"), R("fewer_workers")]
SAVED = Saved(40, "/o/a-step00000040-state", "/o/a-step00000040.safetensors")


def test_cuda_oom_takes_the_next_rung_and_resumes_the_state():
    n = decide("oom_vram", vram=VRAM, ram=RAM, applied=(), saved=SAVED)
    assert (n.action, n.new_rung, n.rungs, n.start_step, n.resume_state) == \
        ("resume", "fp8_base", ("fp8_base",), 40, SAVED.state_dir)
    n = decide("oom_vram", vram=VRAM, ram=RAM, applied=("fp8_base", "blocks_to_swap=20"), saved=SAVED)
    assert n.new_rung == "fewer_frames" and n.recache and n.resume_state == SAVED.state_dir


def test_rank_change_restarts_and_says_so():
    n = decide("oom_vram", vram=VRAM, applied=("fp8_base", "blocks_to_swap=20", "fewer_frames"), saved=SAVED)
    assert n.action == "restart" and n.start_step == 0 and n.resume_state is None and n.network_weights is None
    assert "rank" in n.reason


def test_state_unusable_continues_from_weights():
    odd = [R("odd", {"train.x": 1}, keeps_state=False)]
    n = decide("oom_vram", vram=odd, saved=SAVED)
    assert n.action == "resume" and n.network_weights == SAVED.weights and n.resume_state is None
    assert "fresh optimizer" in n.reason


def test_nothing_saved_restarts():
    n = decide("oom_vram", vram=VRAM, saved=None)
    assert n.action == "restart" and n.start_step == 0 and "nothing was saved" in n.reason


def test_host_oom_uses_the_ram_rungs():
    n = decide("oom_ram", vram=VRAM, ram=RAM, applied=("fp8_base",), saved=SAVED)
    assert n.new_rung == "no_pinned_memory" and n.rungs == ("fp8_base", "no_pinned_memory")


def test_loss_spike_halves_lr_from_the_last_good_save():
    good = Saved(20, "/o/s20", "/o/w20")
    n = decide("loss_spike", saved=SAVED, good_saved=good, lr_scale=1.0)
    assert n.lr_scale == 0.5 and n.start_step == 20 and n.resume_state == "/o/s20" and n.new_rung == HALF_LR
    n = decide("nan", saved=SAVED, good_saved=good, lr_scale=0.5, previous=["loss_spike"])
    assert n.lr_scale == 0.25
    n = decide("nan", good_saved=good, previous=["loss_spike", "nan"])
    assert n.action == "stop"


def test_crash_interrupt_and_budget_stop():
    n = decide("crashed", failure_line="KeyError: 'x'", vram=VRAM, saved=SAVED)
    assert n.action == "stop" and "KeyError: 'x'" in n.reason
    assert decide("interrupted", saved=SAVED).action == "stop"
    n = decide("oom_vram", vram=VRAM, attempts_made=3, max_attempts=3, applied=("fp8_base",))
    assert n.action == "stop" and "budget" in n.reason and "fp8_base" in n.reason


def test_exhausted_ladder_lists_what_was_tried():
    n = decide("oom_vram", vram=VRAM[:1], applied=("fp8_base",), saved=SAVED)
    assert n.action == "stop" and "exhausted" in n.reason and "fp8_base" in n.reason


def test_stall_retries_once():
    n = decide("stall", saved=SAVED)
    assert n.action == "resume" and n.new_rung is None and n.start_step == 40
    assert decide("stall", saved=SAVED, previous=["stall"]).action == "stop"


def test_a_stop_says_where_a_resume_will_continue():
    from kohyawan.run import ladder

    nothing = ladder.decide("interrupted", failure_line=None, vram=[], ram=[], applied=[], lr_scale=1.0,
                            attempts_made=1, max_attempts=8, saved=None, good_saved=None, previous=[])
    assert nothing.action == "stop" and "starts again from step 0" in nothing.reason
    saved = ladder.Saved(40, "/runs/x/a-state", None)
    later = ladder.decide("interrupted", failure_line=None, vram=[], ram=[], applied=[], lr_scale=1.0,
                          attempts_made=1, max_attempts=8, saved=saved, good_saved=saved, previous=[])
    assert "continues from the save at step 40" in later.reason
