"""The memory model's physics: sizes, when each part exists, monotonicity (the points it is checked against are in
tests/test_points.py)."""

import itertools

import pytest

from kohyawan.estimate import disk, memory, steptime
from kohyawan.estimate.memory import MemoryInputs, inputs_from_values

A14B_EXPERT = dict(task="t2v-A14B", expert="low")


def peak(**kw) -> float:
    return memory.vram(MemoryInputs(**kw)).total_gib


def test_model_sizes_match_the_published_checkpoints():
    s14, s13 = memory.SHAPES["14B"], memory.SHAPES["1.3B"]
    assert s14.total_params() * 2 / 1e9 == pytest.approx(28.6, abs=0.1)        # bf16 14B expert
    # fp8_base alone casts the whole model (transformer.to(float8)); fp8_scaled only the blocks' Linear weights
    assert memory.dit_bytes(MemoryInputs(fp8_base=True)) == s14.total_params()
    assert memory.dit_bytes(MemoryInputs(fp8_base=True, fp8_scaled=True)) / 1e9 == pytest.approx(14.5, abs=0.2)
    assert s13.total_params() / 1e9 == pytest.approx(1.42, abs=0.01)           # 1.3B, 30 blocks
    assert (s14.blocks, s13.blocks) == (40, 30)


def test_lora_size_and_module_count_match_musubi_files():
    inp = MemoryInputs(task="t2v-A14B", rank=32)
    assert memory.lora_modules(inp) == 400
    assert disk.lora_file_bytes(inp, 2) / 1e6 == pytest.approx(307, abs=1)   # design: ~307 MB bf16
    assert disk.lora_file_bytes(inp, 4) / 1e6 == pytest.approx(614, abs=1)
    assert memory.lora_modules(MemoryInputs(task="t2v-1.3B")) == 300


def test_token_count_of_the_14b_models():
    inp = MemoryInputs(frames=81, width=512, height=512)
    assert inp.tokens == 21 * 32 * 32
    assert MemoryInputs(frames=16, width=512, height=512).latent_frames == 4   # trainer cuts 16 to 13


CLIPS = dict(task="t2v-A14B", expert="high", grad_ckpt=True, optimizer="adamw", rank=64, width=512, height=512,
             frames=25, fp8_base=True, fp8_scaled=True, blocks_to_swap=10)


def test_the_optimizer_state_exists_only_from_the_first_optimizer_step_on():
    v = memory.vram(MemoryInputs(**CLIPS))
    assert v.phase == "backward"
    state = memory.lora_params(MemoryInputs(**CLIPS)) * 8 / memory.GIB          # torch AdamW: two fp32 moments
    assert v.parts["optimizer_state"] == pytest.approx(state)
    assert v.total_gib - v.first_step_gib == pytest.approx(state)             # step 2 is the first true peak
    assert sum(v.parts.values()) == pytest.approx(v.total_gib)


def test_small_images_peak_at_the_optimizer_step_with_every_gradient():
    v = memory.vram(MemoryInputs(**{**CLIPS, "frames": 1, "width": 256, "height": 256, "rank": 128}))
    params = memory.lora_params(MemoryInputs(rank=128)) / memory.GIB
    assert v.phase == "optimizer_step" and v.parts["gradients"] == pytest.approx(4 * params)
    assert v.first_step_gib == pytest.approx(v.total_gib)     # the first step creates the state at its end
    assert sum(v.parts.values()) == pytest.approx(v.total_gib)


def test_wan22_keeps_the_time_embedding_per_token_and_wan21_does_not():
    kw = dict(CLIPS, frames=81)
    wan22 = memory.vram(MemoryInputs(**kw))
    forced = memory.vram(MemoryInputs(**kw, force_v2_1_time_embedding=True))
    wan21 = memory.vram(MemoryInputs(**{**kw, "task": "t2v-14B"}))
    tokens, dim = MemoryInputs(**kw).tokens, 5120
    assert wan22.parts["time_embedding"] == pytest.approx(memory.TIME_EMBED_D * dim * tokens / memory.GIB)
    assert forced.parts["time_embedding"] == 0 and wan21.parts["time_embedding"] == 0
    less = (memory.TIME_EMBED_D + memory.MODULATION_D) * dim * tokens / memory.GIB
    assert wan22.total_gib - forced.total_gib == pytest.approx(less)
    assert forced.total_gib == pytest.approx(wan21.total_gib)


def test_fp8_weights_add_one_upcast_block_while_it_is_recomputed():
    upcast = memory.vram(MemoryInputs(**CLIPS)).parts["fp8_upcast"]
    assert upcast == pytest.approx(2 * memory.SHAPES["14B"].block_linear_params() / memory.GIB)
    assert memory.vram(MemoryInputs(**{**CLIPS, "fp8_base": False})).parts["fp8_upcast"] == 0


def test_allocator_reserve_with_expandable_segments_has_its_own_constants():
    plain = memory.vram(MemoryInputs(**CLIPS))
    expandable = memory.vram(MemoryInputs(**CLIPS, expandable_segments=True))
    tokens = MemoryInputs(**CLIPS).tokens
    assert plain.parts["allocator_reserve"] == pytest.approx(memory.ALLOC_GAP_D * 5120 * tokens / memory.GIB)
    assert expandable.parts["allocator_reserve"] == pytest.approx(
        memory.ALLOC_EXPANDABLE_BASE_GIB + memory.ALLOC_GAP_EXPANDABLE_D * 5120 * tokens / memory.GIB)
    # measured on the H200 (points.toml D vs D-expandable): far less reserve with expandable segments
    assert expandable.parts["allocator_reserve"] < plain.parts["allocator_reserve"]
    assert plain.reserved_gib == pytest.approx(plain.allocated_gib + plain.parts["allocator_reserve"])


BASE = dict(task="t2v-A14B", expert="low", fp8_base=True, grad_ckpt=True, optimizer="AdamW8bit", width=512,
            height=512, frames=17, rank=32)


@pytest.mark.parametrize("key,values", [("frames", [1, 17, 33, 49, 81]), ("width", [256, 384, 512, 768]),
                                        ("height", [256, 384, 512, 768]), ("rank", [8, 16, 32, 64, 128]),
                                        ("batch", [1, 2, 4])])
@pytest.mark.parametrize("ckpt,offload,swap", [(True, False, 0), (False, False, 0), (True, True, 20),
                                               (True, False, 39)])
def test_more_work_never_lowers_vram_ram_or_time(key, values, ckpt, offload, swap):
    rows = []
    for v in values:
        inp = MemoryInputs(**{**BASE, key: v, "grad_ckpt": ckpt, "grad_ckpt_cpu_offload": offload,
                              "blocks_to_swap": swap})
        rows.append((memory.vram(inp).total_gib, memory.host_ram(inp)["total"],
                     steptime.step_seconds(inp, 165, 0.45, 24)["total"]))
    for (v0, r0, t0), (v1, r1, t1) in zip(rows, rows[1:]):
        assert v1 >= v0 and r1 >= r0 and t1 >= t0


@pytest.mark.parametrize("task,expert,fp8", list(itertools.product(["t2v-A14B", "t2v-1.3B", "i2v-14B"],
                                                              ["both", "low"], [False, True])))
def test_more_swapped_blocks_never_raise_vram_and_never_lower_ram(task, expert, fp8):
    shape = memory.model_shape(task)
    prev = None
    for n in range(0, shape.max_swap + 3):   # past the maximum it is clamped
        inp = MemoryInputs(**{**BASE, "task": task, "expert": expert, "fp8_base": fp8, "blocks_to_swap": n})
        cur = (memory.vram(inp).total_gib, memory.host_ram(inp)["total"])
        if prev:
            assert cur[0] <= prev[0] and cur[1] >= prev[1]
        prev = cur


def test_dual_experts_are_both_resident_unless_the_inactive_one_is_offloaded():
    one = peak(**{**BASE, "expert": "low"})
    both = peak(**{**BASE, "expert": "both"})
    offloaded = MemoryInputs(**{**BASE, "expert": "both", "offload_inactive_dit": True})
    assert both - one == pytest.approx(memory.dit_bytes(MemoryInputs(fp8_base=True)) / memory.GIB, rel=0.001)
    assert memory.vram(offloaded).total_gib == pytest.approx(one)
    assert memory.host_ram(offloaded)["inactive_expert"] > 13


def test_optimizer_state_sizes():
    def lora_state(opt):
        return memory.vram(MemoryInputs(**{**BASE, "rank": 64, "optimizer": opt})).parts["optimizer_state"]
    params = memory.lora_params(MemoryInputs(rank=64)) / memory.GIB
    assert lora_state("AdamW") - lora_state("AdamW8bit") == pytest.approx(6 * params, rel=0.001)
    assert lora_state("bitsandbytes.optim.AdamW8bit") == pytest.approx(lora_state("AdamW8bit"))
    assert lora_state("Adafactor") < lora_state("AdamW8bit") < lora_state("AdamW")


def test_inputs_from_musubi_values():
    inp = inputs_from_values(
        {"blocks_to_swap": 20, "fp8_base": True, "fp8_scaled": True, "network_dim": 96,
         "optimizer_type": "AdamW8bit", "gradient_checkpointing": True, "max_data_loader_n_workers": 2},
        {"resolution": [640, 368], "target_frames": [17, 33], "batch_size": 2}, "i2v-A14B", "high")
    assert (inp.width, inp.height, inp.frames, inp.batch, inp.rank, inp.swapped, inp.workers) == \
        (640, 368, 33, 2, 96, 20, 2)
    assert inp.fp8_base and inp.fp8_scaled and inp.grad_ckpt and not inp.dual_resident
    square = inputs_from_values({}, {"resolution": 512}, "t2v-1.3B", "both")
    assert (square.width, square.height, square.frames, square.rank) == (512, 512, 1, 4)
    assert not square.dual_resident                          # Wan 2.1 tasks have one DiT


def test_disk_sizes_of_caches():
    inp = MemoryInputs(frames=81, width=512, height=512)
    assert disk.latent_cache_bytes(inp) == 16 * 21 * 64 * 64 * 2
    assert disk.text_cache_bytes() == 512 * 4096 * 2
    i2v = MemoryInputs(task="i2v-A14B", frames=81, width=512, height=512)
    assert disk.latent_cache_bytes(i2v) > disk.latent_cache_bytes(inp)


def test_block_swap_costs_time_only_when_copies_outrun_compute():
    fast = MemoryInputs(**{**BASE, "frames": 81, "blocks_to_swap": 30})
    tiny = MemoryInputs(**{**BASE, "frames": 1, "width": 256, "height": 256, "blocks_to_swap": 30})
    t_fast = steptime.step_seconds(fast, 165, 0.45, 24)
    t_tiny = steptime.step_seconds(tiny, 165, 0.45, 24)
    assert t_fast["block_swap"] < 0.1 * t_fast["compute"]     # hidden behind a long step
    assert t_tiny["block_swap"] > t_tiny["compute"]           # a short step waits for the copies
    pinned = steptime.step_seconds(MemoryInputs(**{**BASE, "frames": 1, "width": 256, "height": 256,
                                                  "blocks_to_swap": 30, "swap_pinned": True}), 165, 0.45, 24)
    assert pinned["total"] < t_tiny["total"]


def test_block_swap_loads_every_expert_into_host_ram_first():
    fp8 = memory.dit_bytes(MemoryInputs(fp8_base=True)) / memory.GIB
    sixteen = memory.dit_bytes(MemoryInputs()) / memory.GIB
    dual = memory.host_ram(MemoryInputs(**{**BASE, "expert": "both", "blocks_to_swap": 10}))
    single = memory.host_ram(MemoryInputs(**{**BASE, "expert": "low", "blocks_to_swap": 10}))
    # the expert loading: the 16-bit file's weights and the fp8 copy made from them, at once (measured:
    # C-calibrate); the one loaded before it: its fp8 copy only (its 16-bit tensors are let go)
    assert dual["total"] == pytest.approx(memory.HOST_BASE_GIB + fp8 + sixteen + fp8) and dual["load_transient"] > 0
    assert single["total"] == pytest.approx(memory.HOST_BASE_GIB + sixteen + fp8)
    plain16 = memory.host_ram(MemoryInputs(**{**BASE, "fp8_base": False, "expert": "low", "blocks_to_swap": 10}))
    assert plain16["total"] == pytest.approx(memory.HOST_BASE_GIB + sixteen)
    no_swap = memory.host_ram(MemoryInputs(**{**BASE, "expert": "both"}))
    assert no_swap["load_transient"] == 0 and no_swap["total"] < 10
