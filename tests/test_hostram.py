"""The host-RAM ladder (issue 11 item 5), pure: the candidate steps from the settings in effect, the ones the
estimate's host-RAM model says help in the phase that failed and that still fit the GPU, and the message that
names what would be needed once none is left."""

from kohyawan.config import profiles
from kohyawan.run import hostram, rungs
from kohyawan.run.ladder import decide


def a14b(*sets):
    return profiles.resolve("character", task="t2v-A14B", sets=["blocks_to_swap=30", *sets])


def names(found):
    return [r.name for r in found.steps]


def test_block_swap_steps_down_the_grid_from_the_swap_in_effect():
    spec = profiles.resolve("character", task="t2v-A14B")
    assert [r.name for r in rungs.ram_rungs(spec)] == ["fewer_workers", "fp8_base"]   # no swap yet to lower
    swapped = rungs.apply(spec, rungs.vram_rungs(spec)[:5])        # the VRAM ladder took fp8 and swap to 39
    assert [r.name for r in rungs.ram_rungs(swapped)] == [
        "fewer_workers", "fewer_blocks_to_swap=30", "fewer_blocks_to_swap=20", "fewer_blocks_to_swap=10",
        "fewer_blocks_to_swap=0"]
    end = rungs.apply(swapped, rungs.ram_rungs(swapped))
    assert end.train["blocks_to_swap"] == 0 and end.train["max_data_loader_n_workers"] == 1
    assert rungs.swap_steps(profiles.resolve("character", task="t2v-1.3B", sets=["blocks_to_swap=25"])) == [
        "fewer_blocks_to_swap=20", "fewer_blocks_to_swap=10", "fewer_blocks_to_swap=0"]


def test_a_recorded_step_is_rebuilt_from_its_name_against_the_settings_before_it():
    spec = a14b()
    assert dict(rungs.named("fewer_blocks_to_swap=10", spec).changes) == {"train.blocks_to_swap": 10}
    assert rungs.named("fewer_blocks_to_swap=40", spec) is None                 # never raises the swap
    assert rungs.named("half_lr", spec) is None and rungs.named("fewer_blocks_to_swap", spec) is None


def test_killed_while_training_every_step_that_lowers_the_steady_need_in_order():
    spec = a14b("use_pinned_memory_for_block_swap=true")
    found = hostram.plan(spec, rungs.ram_rungs(spec), phase="train", vram_gib=None, margin_gib=1.5)
    # the model counts pinned transfers as the cheaper kind: turning them off is no step here
    assert names(found) == ["fewer_workers", "fp8_base", "fewer_blocks_to_swap=20", "fewer_blocks_to_swap=10",
                            "fewer_blocks_to_swap=0"]
    refused = hostram.plan(spec, rungs.ram_rungs(spec), phase="train", vram_gib=None, margin_gib=1.5,
                           pinned_refused=True)
    assert names(refused)[0] == "no_pinned_memory"


def test_killed_while_loading_only_no_swap_lowers_the_peak():
    spec = a14b()
    found = hostram.plan(spec, rungs.ram_rungs(spec), phase="load", vram_gib=80, margin_gib=1.5)
    # every expert loads whole into RAM first, and fp8_base adds its fp8 copy to the 16-bit weights while it
    # loads (measured, points.toml C-calibrate): only loading straight to the GPU lowers the peak
    assert names(found) == ["fewer_blocks_to_swap=0"]


def test_no_swap_that_fits_only_with_fp8_takes_both_in_one_step():
    spec = a14b()
    found = hostram.plan(spec, rungs.ram_rungs(spec), phase="load", vram_gib=48, margin_gib=1.5)
    step, = found.steps
    assert step.name == "fp8_base+fewer_blocks_to_swap=0"
    assert step.changes["train.fp8_base"] is True and step.changes["train.blocks_to_swap"] == 0
    # the recorded name is rebuilt the same way on resume; either part alone does not do
    assert rungs.named(step.name, spec) == step
    assert hostram.need_of(rungs.apply(spec, [step])).vram_gib + 1.5 <= 48
    alone = hostram.need_of(spec.with_changes({"train.blocks_to_swap": 0}, "test"))
    assert alone.vram_gib + 1.5 > 48
    # fp8 alone lowers no load: the expert loading holds its 16-bit file and the fp8 copy
    assert hostram.need_of(spec.with_changes({"train.fp8_base": True}, "test")).load_gib >= hostram.need_of(spec).load_gib


def test_fewer_swapped_blocks_must_still_fit_the_gpu_then_the_ladder_names_what_is_needed():
    spec = a14b()
    done = hostram.plan(spec, rungs.ram_rungs(spec), phase="load", vram_gib=24, margin_gib=1.5, ram_gib=24)
    assert done.steps == ()                          # no swap does not fit 24 GiB; nothing else lowers the load
    # the GPU that would need no block swap: the estimate of the same settings without it and with fp8 weights
    # (the smaller of the two), plus the margin
    unswapped = hostram.need_of(spec.with_changes({"train.blocks_to_swap": 0, "train.fp8_base": True,
                                                   "train.fp8_scaled": True}, "test"))
    load = hostram.need_of(spec).load_gib
    assert done.exhausted == (
        f"needs ~{load:.1f} GiB host RAM while the DiTs load (estimate; 24 GiB here) at the lowest-RAM setting the "
        "ladder reaches on this GPU (max_data_loader_n_workers=2, blocks_to_swap=30): add host RAM, or use a GPU with "
        f"{unswapped.vram_gib + 1.5:.0f} GiB or more, where no block swap is needed (~4.3 GiB host RAM)")
    # two 14B experts of 16-bit weights in RAM at once: ~53 GiB of files and the process
    assert 53 <= load <= 60
    assert 36 <= unswapped.vram_gib + 1.5 <= 46    # two 14B experts in fp8 without swap: ~27 GiB + activations
    bf16 = hostram.need_of(spec.with_changes({"train.blocks_to_swap": 0}, "test"))
    assert bf16.vram_gib > unswapped.vram_gib


def test_plan_uses_the_need_it_is_given():
    """The judgement is the model's: a need function that says a step frees nothing drops it."""
    spec = a14b()
    flat = hostram.plan(spec, rungs.ram_rungs(spec), phase="train", vram_gib=None, margin_gib=1.5,
                        need=lambda s: hostram.Need(10.0, 50.0, 40.0))
    assert flat.steps == () and "~40.0 GiB host RAM while training" in flat.exhausted


def R(name, changes):
    return rungs.Rung(name, changes, needs_recache=False, keeps_state=True)


def test_the_ladder_stops_with_what_would_be_needed_and_never_swaps_deeper_again():
    n = decide("oom_ram", ram=(), applied=("fp8_base", "fewer_blocks_to_swap=10"), ram_exhausted="needs ~X")
    assert n.action == "stop" and n.reason == ("out of host RAM and the ladder is exhausted: needs ~X "
                                               "(rungs in effect: fp8_base, fewer_blocks_to_swap=10)")
    vram = [R("blocks_to_swap=30", {"train.blocks_to_swap": 30}), R("fewer_frames", {"dataset.max_frames": 13})]
    n = decide("oom_vram", vram=vram, applied=("blocks_to_swap=20", "fewer_blocks_to_swap=10"))
    assert n.new_rung == "fewer_frames"                 # a deeper swap would run out of host RAM again
    assert decide("oom_vram", vram=vram, applied=("fp8_base",)).new_rung == "blocks_to_swap=30"
    # a joined step that turned block swap off counts too
    assert decide("oom_vram", vram=vram, applied=("fp8_base+fewer_blocks_to_swap=0",)).new_rung == "fewer_frames"
