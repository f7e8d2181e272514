"""kohyawan.wan is the one home of WAN's architecture facts: each table that uses them agrees with it."""

import pytest

from kohyawan import wan
from kohyawan.estimate import memory
from kohyawan.lora import keys
from kohyawan.modelfiles.layouts import dit_layout
from kohyawan.trainer import musubi


def test_tasks_are_the_choices_of_musubis_own_parser():
    # the option table is read from wan_train_network.py's argument parser
    assert set(wan.TASKS) == set(musubi.options()["task"].choices)
    assert musubi.TASKS == tuple(wan.TASKS)


def test_which_tasks_load_a_model_with_image_cross_attention():
    # musubi's configs: Wan 2.1 I2V and FLF2V, and every Fun-Control task (musubi sets i2v for them);
    # Wan 2.2 uses plain cross-attention even for I2V
    assert [t for t, m in wan.TASKS.items() if m.image_attn] == [
        "i2v-14B", "flf2v-14B", "t2v-1.3B-FC", "t2v-14B-FC", "i2v-14B-FC"]
    assert [t for t, m in wan.TASKS.items() if m.dual] == list(musubi.DUAL_EXPERT_TASKS) == ["t2v-A14B", "i2v-A14B"]
    assert musubi.TIMESTEP_BOUNDARY == {"t2v-A14B": 875, "i2v-A14B": 900}
    assert [t for t, m in wan.TASKS.items() if m.start_image] == ["i2v-A14B", "i2v-14B", "flf2v-14B", "i2v-14B-FC"]


@pytest.mark.parametrize("task", list(wan.TASKS))
def test_every_table_of_a_task_agrees_with_the_layout_musubi_loads(task):
    tm = wan.TASKS[task]
    layout = dict(dit_layout(tm.size, tm.variant, tm.family))
    blocks = {int(n.split(".")[1]) for n in layout if n.startswith("blocks.")}
    has_k_img = "blocks.0.cross_attn.k_img.weight" in layout
    assert (len(blocks), layout["patch_embedding.weight"][1], has_k_img) == (tm.dit.layers, tm.in_dim, tm.image_attn)
    # the LoRA tools, the memory model and the simulated trainer count the same modules, with the layout's shapes
    modules = keys.lora_modules(task)
    assert all(layout[f"{path}.weight"] == shape for path, shape in modules)
    assert len(modules) == memory.lora_modules(memory.MemoryInputs(task=task))
    assert memory.model_shape(task).max_swap == musubi.max_blocks_to_swap(task) == tm.dit.layers - 1


def test_widths_name_the_model_sizes():
    assert [wan.size_of_dim(d) for d in (5120, 1536, 3072, 4096)] == ["14B", "1.3B", "5B", None]
    assert wan.families_of("14B") == ("wan2.1", "wan2.2")
    assert wan.families_of("1.3B") == ("wan2.1",) and wan.families_of("5B") == ("wan2.2",)


def test_frames_and_tokens_follow_the_vae_strides_and_the_patch():
    assert [wan.kept_frames(n) for n in (1, 4, 5, 16, 24, 81)] == [1, 1, 5, 13, 21, 81]
    assert [wan.latent_frames(n) for n in (1, 5, 13, 81)] == [1, 2, 4, 21]
    assert wan.tokens(512, 512, 81) == 21 * 32 * 32
    assert wan.tokens(960, 544, 1) == 60 * 34
    assert wan.VAES["2.2"].stride == (4, 16, 16) and wan.VAES["2.2"].pixel_channels == 12
