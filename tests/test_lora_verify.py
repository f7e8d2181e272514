"""verify/inspect against musubi-format LoRAs: full key sets, other model sizes, Wan 2.1 I2V on 2.2."""

import pytest
torch = pytest.importorskip("torch")  # the LoRA tools need torch; the Python 3.10 CI run has none
from safetensors.torch import load_file, save_file

from kohyawan.lora import keys as K
from kohyawan.lora.fabricate import write_lora
from kohyawan.lora.inspect import guess_expert, read_info
from kohyawan.lora.io import LoraFileError
from kohyawan.lora.verify import verify_file


@pytest.fixture(scope="module")
def full14(tmp_path_factory):
    """Every module of a WAN 2.2 14B LoRA (400 modules, 1200 tensors), rank 2 bf16."""
    return write_lora(tmp_path_factory.mktemp("full") / "full14.safetensors", task="t2v-A14B", rank=2)


def test_full_14b_lora_has_musubis_exact_keys_and_loads_on_both_a14b_tasks(full14):
    sd_keys = set(load_file(full14))
    assert len(sd_keys) == 1200
    assert "lora_unet_blocks_39_ffn_2.lora_up.weight" in sd_keys
    assert "lora_unet_blocks_0_cross_attn_o.alpha" in sd_keys
    for task in ("t2v-A14B", "i2v-A14B", "t2v-14B", "i2v-14B"):  # a T2V LoRA loads on the image models too
        report = verify_file(full14, task)
        assert (report.ok, report.loaded, report.modules, report.ignored) == (True, 1200, 400, [])
    info = read_info(full14)
    assert (info.model, info.rank, info.alpha, info.dtype, info.modules, info.blocks) == ("wan-14B", 2, 1.0, "bf16", 400, 40)
    assert info.size_ok is True
    assert info.compatible_tasks == ["t2v-A14B", "i2v-A14B", "t2v-14B", "i2v-14B", "t2i-14B", "flf2v-14B",
                                     "t2v-14B-FC", "i2v-14B-FC"]


def test_module_counts_match_musubi():
    assert len(K.lora_modules("t2v-A14B")) == 400
    assert len(K.lora_modules("t2v-1.3B")) == 300
    assert len(K.lora_modules("i2v-14B")) == 480


def test_13b_lora_on_a_14b_task_is_rejected_with_the_reason(full14, tmp_path):
    small = write_lora(tmp_path / "small.safetensors", task="t2v-1.3B", rank=2)
    report = verify_file(small, "t2v-A14B")
    assert not report.ok and report.loaded == 0 and len(report.ignored) == 900
    assert set(report.reasons.values()) == {"shape"}
    assert report.problems == [
        "900 keys do not fit the weights of the Wan 2.2 14B model of t2v-A14B (ComfyUI logs ERROR and skips them; "
        "e.g. lora_unet_blocks_0_cross_attn_k: up [1536, 2] x down [2, 1536] vs weight [5120, 5120]): "
        "LoRA for another model size"]
    assert read_info(small).compatible_tasks == ["t2v-1.3B", "t2v-1.3B-FC"]
    # and the other way round: 14B blocks 30-39 do not exist in the 1.3B model
    report = verify_file(full14, "t2v-1.3B")
    assert report.loaded == 0
    assert sum(1 for r in report.reasons.values() if r == "block_index") == 300
    assert any("beyond the 30 blocks" in p for p in report.problems)


def test_wan21_i2v_lora_on_wan22_i2v_drops_image_attention(tmp_path):
    path = write_lora(tmp_path / "i2v21.safetensors", task="i2v-14B", rank=2, blocks=[0, 5])
    assert verify_file(path, "i2v-14B").ok
    report = verify_file(path, "i2v-A14B")
    assert not report.ok
    assert report.loaded == 60 and len(report.ignored) == 12
    assert report.ignored[0] == "lora_unet_blocks_0_cross_attn_k_img.alpha"
    assert all(k.split(".")[0].endswith(("k_img", "v_img")) for k in report.ignored)
    assert report.problems == [
        "12 keys are Wan 2.1 image cross-attention (k_img/v_img), which the Wan 2.2 14B model of i2v-A14B does "
        "not have: ComfyUI drops them silently; this LoRA was trained for a Wan 2.1 I2V model"]
    info = read_info(path)
    assert info.image_attn and "i2v-A14B" not in info.compatible_tasks and info.size_ok is False


def test_names_comfyui_does_not_load_are_listed(tmp_path):
    src = write_lora(tmp_path / "a.safetensors", rank=2, blocks=[0])
    sd = load_file(src)
    renamed = {"transformer." + K.module_path(k.split(".")[0]) + "." + k.split(".", 1)[1]: v for k, v in sd.items()}
    save_file(renamed, tmp_path / "t.safetensors")
    report = verify_file(tmp_path / "t.safetensors", "t2v-A14B")
    assert not report.ok and report.loaded == 0 and len(report.ignored) == 30
    assert "'diffusers' names" in report.problems[0] and "lora convert --to musubi" in report.problems[0]


def test_comfy_names_and_videox_fun_prefix_load(tmp_path):
    sd = load_file(write_lora(tmp_path / "a.safetensors", rank=2, blocks=[0]))
    comfy = {}
    for k, v in sd.items():
        target, suffix = K.split_key(k)
        new = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}[suffix]
        comfy[K.comfy_name(K.module_path(target)) + "." + new] = v
    save_file(comfy, tmp_path / "c.safetensors")
    assert verify_file(tmp_path / "c.safetensors", "t2v-A14B").ok
    fun = {k.replace("lora_unet_", "lora_unet__"): v for k, v in sd.items()}
    save_file(fun, tmp_path / "f.safetensors")
    assert verify_file(tmp_path / "f.safetensors", "t2v-A14B").ok
    # a stray key on a real module: ComfyUI does not read the suffix
    sd["lora_unet_blocks_0_ffn_0.lora_mystery"] = torch.zeros(1)
    save_file(sd, tmp_path / "s.safetensors")
    report = verify_file(tmp_path / "s.safetensors", "t2v-A14B")
    assert report.ignored == ["lora_unet_blocks_0_ffn_0.lora_mystery"] and report.reasons[report.ignored[0]] == "suffix"


def test_non_lora_and_broken_files(tmp_path):
    dit = {"blocks.0.self_attn.q.weight": torch.zeros(8, 8), "head.head.weight": torch.zeros(4, 8)}
    save_file(dit, tmp_path / "dit.safetensors")
    with pytest.raises(LoraFileError, match=r"^dit.safetensors: not a LoRA: none of its 2 tensors"):
        read_info(tmp_path / "dit.safetensors")
    with pytest.raises(LoraFileError, match="not a LoRA"):
        verify_file(tmp_path / "dit.safetensors", "t2v-A14B")
    src = write_lora(tmp_path / "a.safetensors", rank=2, blocks=[0])
    (tmp_path / "cut.safetensors").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(LoraFileError, match=r"^cut.safetensors: truncated: tensors need \d+ bytes of data, file has \d+$"):
        read_info(tmp_path / "cut.safetensors")


def test_expert_guess_order():
    assert guess_expert({"kohyawan.expert": "low"}, "sarah_high.safetensors") == "low"
    assert guess_expert({}, "wan2.2_character_sarah_high_v1.safetensors") == "high"
    assert guess_expert({}, "sarah-LOW-step00000010.safetensors") == "low"
    assert guess_expert({}, "highland.safetensors") is None
    assert guess_expert({"modelspec.timestep_range": "875,1000"}, "x.safetensors") == "high"
    assert guess_expert({"modelspec.timestep_range": "0,900"}, "x.safetensors") == "low"
    assert guess_expert({"modelspec.timestep_range": "0,1000"}, "x.safetensors") is None


def test_a_mismatched_pair_does_not_hide_the_targets_other_keys(tmp_path):
    # found by running ComfyUI's own loader: every key of the target must be accounted for
    sd = load_file(write_lora(tmp_path / "a.safetensors", rank=2, blocks=[0]))
    sd["lora_unet_blocks_0_ffn_0.lora_mystery"] = torch.ones(1)
    sd["lora_unet_blocks_0_ffn_0.diff_b"] = torch.zeros(13824)
    save_file(sd, tmp_path / "odd.safetensors")
    report = verify_file(tmp_path / "odd.safetensors", "t2v-A14B")
    assert report.ignored == ["lora_unet_blocks_0_ffn_0.lora_mystery"] and report.loaded == 31
    report = verify_file(tmp_path / "odd.safetensors", "t2v-1.3B")
    assert report.loaded == 0 and len(report.ignored) == 32
    assert report.reasons["lora_unet_blocks_0_ffn_0.diff_b"] == "shape"
    assert report.reasons["lora_unet_blocks_0_ffn_0.lora_mystery"] == "suffix"
