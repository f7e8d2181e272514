"""Fabricated model files: real headers, full sizes, no disk."""

import hashlib
import math
import os

import pytest
from safetensors import safe_open

from kohyawan.modelfiles import standins as fabricate
from kohyawan.modelfiles.layouts import dit_layout, t5_layout, vae_layout

# (tensor count, parameter count, digest of the sorted "name shape" lines), taken from musubi-tuner's
# WanModel / WanVAE_ / umT5 encoder and ComfyUI's Wan 2.2 VAE instantiated on torch's meta device.
# A change here means the layouts no longer match what the trainer loads.
REFERENCE = {
    ("dit", "14B", "t2v", "wan2.1"): (1095, 14288491584, "925559d6bc0821ce"),
    ("dit", "14B", "t2v", "wan2.2"): (1095, 14288491584, "925559d6bc0821ce"),
    ("dit", "14B", "i2v", "wan2.1"): (1303, 16394878784, "9a591d4f6fa6e71e"),
    ("dit", "14B", "i2v", "wan2.2"): (1095, 14288901184, "742b062e7bea2ee8"),
    ("dit", "14B", "flf2v", "wan2.1"): (1304, 16395536704, "5cfac2fdb4a242eb"),
    ("dit", "14B", "fun-control", "wan2.1"): (1303, 16395124544, "5041b8b9a7a266bd"),
    ("dit", "1.3B", "t2v", "wan2.1"): (825, 1418996800, "ed5509461fb9d98d"),
    ("dit", "5B", "ti2v", "wan2.2"): (825, 4999787712, "bd12ca1a05da3bde"),
    ("vae", "2.1"): (194, 126892531, "c66cd55f95a80dc3"),
    ("vae", "2.2"): (196, 704688668, "967a83698ebe0f35"),
    ("t5", "wan"): (242, 5680910336, "b16ddbf11d63708b"),
}


def _layout(key):
    if key[0] == "dit":
        return dit_layout(*key[1:])
    return vae_layout(key[1]) if key[0] == "vae" else t5_layout(key[1])


@pytest.mark.parametrize("key", list(REFERENCE), ids=lambda k: "-".join(k))
def test_layouts_match_the_trainers_models(key):
    layout = _layout(key)
    text = "".join(f"{n} {'x'.join(map(str, s))}\n" for n, s in sorted(layout))
    got = (len(layout), sum(math.prod(s) for _, s in layout), hashlib.sha256(text.encode()).hexdigest()[:16])
    assert got == REFERENCE[key]
    assert len({n for n, _ in layout}) == len(layout)  # no duplicate names


def test_hf_t5_has_the_same_parameters_as_the_wan_layout():
    hf, wan = t5_layout("hf"), t5_layout("wan")
    assert len(hf) == len(wan)
    assert sum(math.prod(s) for _, s in hf) == sum(math.prod(s) for _, s in wan)
    assert "encoder.block.23.layer.1.DenseReluDense.wi_1.weight" in dict(hf)  # what ComfyUI keys on


def test_14b_dit_is_full_size_and_sparse(tmp_path):
    p = fabricate.write_dit(tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors", dtype="fp16")
    st = p.stat()
    params = REFERENCE[("dit", "14B", "t2v", "wan2.2")][1]
    with open(p, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
    assert n % 8 == 0
    assert st.st_size == 8 + n + 2 * params  # 28.58 GB, exactly the real file's length
    assert st.st_size > 28_000_000_000
    assert st.st_blocks * 512 < 4 * 1024 * 1024  # only the header is on disk
    assert [x for x in os.listdir(tmp_path) if x != p.name] == []  # no temp file left behind


def test_safetensors_reads_the_fabricated_header(tmp_path):
    pytest.importorskip("torch")  # safe_open(..., "pt") hands out torch tensors
    p = fabricate.write_dit(tmp_path / "d.safetensors", size="1.3B", family="wan2.1", dtype="bf16")
    with safe_open(str(p), "pt") as fh:
        keys = set(fh.keys())
        assert keys == {n for n, _ in dit_layout("1.3B", "t2v", "wan2.1")}
        sl = fh.get_slice("blocks.0.cross_attn.k.weight")
        assert sl.get_shape() == [1536, 1536]
        assert sl.get_dtype() == "BF16"
        t = fh.get_tensor("head.modulation")  # reads bytes from the hole: zeros
        assert list(t.shape) == [1, 2, 1536] and float(t.abs().sum()) == 0.0


def test_fp8_scaled_has_comfyui_markers(tmp_path):
    pytest.importorskip("torch")  # safe_open(..., "pt") hands out torch tensors
    p = fabricate.write_dit(tmp_path / "s.safetensors", size="1.3B", family="wan2.1", dtype="fp8_scaled")
    with safe_open(str(p), "pt") as fh:
        keys = set(fh.keys())
        assert "scaled_fp8" in keys
        assert "blocks.0.cross_attn.k.scale_weight" in keys
        assert fh.get_slice("blocks.0.cross_attn.k.weight").get_dtype() == "F8_E4M3"
        assert fh.get_slice("blocks.0.norm3.weight").get_dtype() == "BF16"


def test_prefix_and_other_writers(tmp_path):
    pytest.importorskip("torch")  # safe_open(..., "pt") hands out torch tensors
    p = fabricate.write_dit(tmp_path / "c.safetensors", size="1.3B", family="wan2.1", prefix="model.diffusion_model.")
    with safe_open(str(p), "pt") as fh:
        assert all(k.startswith("model.diffusion_model.") for k in fh.keys())
    for fn, kw, count in ((fabricate.write_vae, {"version": "2.2"}, 196), (fabricate.write_t5, {"fmt": "hf"}, 242)):
        q = fn(tmp_path / f"{fn.__name__}.safetensors", **kw)
        with safe_open(str(q), "pt") as fh:
            assert len(list(fh.keys())) == count


def test_5b_default_variant_and_bad_arguments(tmp_path):
    pytest.importorskip("torch")  # safe_open(..., "pt") hands out torch tensors
    p = fabricate.write_dit(tmp_path / "5b.safetensors", size="5B")
    with safe_open(str(p), "pt") as fh:
        assert fh.get_slice("patch_embedding.weight").get_shape() == [3072, 48, 1, 2, 2]
    with pytest.raises(ValueError, match="dtype"):
        fabricate.write_dit(tmp_path / "x.safetensors", dtype="int4")
    with pytest.raises(ValueError, match="1.3B"):
        fabricate.write_dit(tmp_path / "x.safetensors", size="1.3B", family="wan2.2")
    with pytest.raises(ValueError, match="5B"):
        fabricate.write_dit(tmp_path / "x.safetensors", size="5B", family="wan2.1")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("task,dtype", [("t2v-A14B", "fp16"), ("i2v-A14B", "bf16"), ("i2v-14B", "bf16"),
                                        ("t2v-1.3B", "fp32"), ("flf2v-14B", "fp16"), ("t2v-1.3B-FC", "bf16")])
def test_a_full_set_for_each_task_passes_the_checks(tmp_path, task, dtype):
    from kohyawan.modelfiles.check import check_models

    files = fabricate.write_task_models(tmp_path / "models dir", task, dtype=dtype)
    assert set(files) == ({"dit", "dit_high_noise", "vae", "t5"} if "A14B" in task else {"dit", "vae", "t5"})
    mp = {"fp16": "fp16", "bf16": "bf16", "fp32": "bf16"}[dtype]
    assert check_models(task, "both", dit=files["dit"], dit_high_noise=files.get("dit_high_noise"),
                        vae=files["vae"], t5=files["t5"], mixed_precision=mp) == []
    total = sum(p.stat().st_blocks * 512 for p in files.values())
    assert total < 16 * 1024 * 1024  # tens of GB of "models" in a few MB of disk
