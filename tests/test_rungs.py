import pytest

from kohyawan.config import profiles
from kohyawan.run import rungs
from kohyawan.errors import ConfigError


def test_default_ladder_order_and_cumulative_application():
    spec = profiles.resolve("character")  # checkpointing is already on in the base profile
    names = [r.name for r in rungs.vram_rungs(spec)]
    assert names == ["fp8_base", "blocks_to_swap=10", "blocks_to_swap=20", "blocks_to_swap=30",
                     "blocks_to_swap=max", "gradient_checkpointing_cpu_offload", "fewer_frames",
                     "lower_resolution", "lower_rank"]
    ladder = rungs.vram_rungs(spec)
    top = rungs.apply(spec, ladder)
    assert top.train["blocks_to_swap"] == 39 and top.train["fp8_base"] and top.train["fp8_scaled"]
    assert top.dataset["max_frames"] == 13 and top.dataset["resolution"] == [384, 384]
    assert (top.train["network_dim"], top.train["network_alpha"]) == (32, 32.0)
    assert top.origin["train.blocks_to_swap"] == "ladder:blocks_to_swap=max"
    by_name = {r.name: r for r in ladder}
    assert by_name["fewer_frames"].needs_recache and by_name["lower_resolution"].needs_recache
    assert not by_name["lower_rank"].keeps_state and by_name["fp8_base"].keeps_state


def test_rungs_that_change_nothing_are_left_out():
    spec = profiles.resolve("character", sets=["blocks_to_swap=25", "fp8_base=true", "fp8_scaled=true"])
    names = [r.name for r in rungs.vram_rungs(spec)]
    assert "fp8_base" not in names and "blocks_to_swap=10" not in names and "blocks_to_swap=20" not in names
    assert names[:2] == ["blocks_to_swap=30", "blocks_to_swap=max"]


def test_block_swap_limit_follows_model_size():
    spec = profiles.resolve("character", task="t2v-1.3B")
    top = rungs.apply(spec, rungs.vram_rungs(spec))
    assert top.train["blocks_to_swap"] == 29


def test_block_swap_turns_off_offload_inactive_dit():
    spec = profiles.resolve("character", sets=["offload_inactive_dit=true"])
    first_swap = next(r for r in rungs.vram_rungs(spec) if r.name.startswith("blocks_to_swap"))
    assert first_swap.changes == {"train.blocks_to_swap": 10, "train.offload_inactive_dit": False}


def test_ram_rungs_move_the_other_way():
    spec = profiles.resolve("character", sets=["blocks_to_swap=30", "use_pinned_memory_for_block_swap=true"])
    ladder = rungs.ram_rungs(spec)
    assert [r.name for r in ladder] == ["no_pinned_memory", "fewer_workers", "fp8_base", "fewer_blocks_to_swap=20",
                                        "fewer_blocks_to_swap=10", "fewer_blocks_to_swap=0"]
    end = rungs.apply(spec, ladder)
    assert end.train["blocks_to_swap"] == 0 and end.train["use_pinned_memory_for_block_swap"] is False
    assert end.train["max_data_loader_n_workers"] == 1


def test_unknown_rung_in_a_profile_is_refused():
    with pytest.raises(ConfigError, match="unknown ladder rung 'more_vram'"):
        profiles.resolve("character", sets=['ladder.vram=["more_vram"]'])
    with pytest.raises(ConfigError, match="needs a number or max"):
        profiles.resolve("character", sets=['ladder.vram=["blocks_to_swap=lots"]'])
    with pytest.raises(ConfigError, match="'fewer_blocks_to_swap=max' needs a number$"):
        profiles.resolve("character", sets=['ladder.ram=["fewer_blocks_to_swap=max"]'])
    assert profiles.resolve("character", sets=['ladder.ram=["fewer_blocks_to_swap=10"]']).extra["ladder"]["ram"]


def test_fewer_frames_follows_the_extraction_mode():
    head = profiles.resolve("character", sets=["target_frames=[81]"])
    rung = next(r for r in rungs.vram_rungs(head) if r.name == "fewer_frames")
    assert rung.changes == {"dataset.target_frames": [41]}
    full = profiles.resolve("motion")
    rung = next(r for r in rungs.vram_rungs(full) if r.name == "fewer_frames")
    assert rung.changes == {"dataset.max_frames": 17}
