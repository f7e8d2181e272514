"""Identifying WAN model files from full-size sparse stand-ins, real torch.save files and broken files."""

import json
import os
import struct
import time

import pytest

from kohyawan.modelfiles import standins as fabricate
from kohyawan.errors import ModelFileError
from kohyawan.modelfiles.standins import write_safetensors
from kohyawan.modelfiles.identify import identify
from kohyawan.modelfiles.layouts import t5_layout, vae_layout

DIT_CASES = [
    # size, variant, family, dtype -> expected (family, variant) as identified
    ("14B", "t2v", "wan2.2", "bf16", None, "t2v"),  # name gives no release: ambiguous by design
    ("14B", "i2v", "wan2.2", "fp16", "wan2.2", "i2v"),
    ("14B", "i2v", "wan2.1", "bf16", "wan2.1", "i2v"),
    ("14B", "flf2v", "wan2.1", "fp16", "wan2.1", "flf2v"),
    ("14B", "fun-control", "wan2.1", "bf16", "wan2.1", "fun-control"),
    ("1.3B", "t2v", "wan2.1", "fp32", "wan2.1", "t2v"),
    ("1.3B", "fun-control", "wan2.1", "bf16", "wan2.1", "fun-control"),
    ("5B", "ti2v", "wan2.2", "fp16", "wan2.2", "ti2v"),
    ("14B", "t2v", "wan2.1", "fp8_e4m3fn", None, "t2v"),
    ("14B", "t2v", "wan2.2", "fp8_e5m2", None, "t2v"),
    ("14B", "i2v", "wan2.2", "fp8_scaled", "wan2.2", "i2v"),
]


@pytest.mark.parametrize("size,variant,family,dtype,want_family,want_variant", DIT_CASES)
def test_dit_identification(tmp_path, size, variant, family, dtype, want_family, want_variant):
    p = fabricate.write_dit(tmp_path / "model.safetensors", size=size, variant=variant, family=family, dtype=dtype)
    i = identify(p)
    assert (i.kind, i.size, i.variant, i.family, i.dtype) == ("dit", size, want_variant, want_family, dtype)
    assert i.layout_ok is True
    assert i.file_size == p.stat().st_size
    assert i.arch["dim"] == {"14B": 5120, "1.3B": 1536, "5B": 3072}[size]
    assert i.arch["layers"] == {"14B": 40, "1.3B": 30, "5B": 30}[size]
    assert i.params > 1_000_000_000


def test_dit_facts_and_description(tmp_path):
    i = identify(fabricate.write_dit(tmp_path / "wan2.2_i2v_high_noise_14B_fp16.safetensors", variant="i2v", dtype="fp16"))
    assert i.arch == {"dim": 5120, "layers": 40, "in_dim": 36, "out_dim": 16}
    assert (i.tensors, i.params, i.expert_hint) == (1095, 14288901184, "high")
    assert i.description == "Wan 2.2 I2V A14B DiT (high-noise expert by name), fp16, 14.29B parameters"
    i = identify(fabricate.write_dit(tmp_path / "x.safetensors", size="5B"))
    assert i.arch["out_dim"] == 48 and i.arch["in_dim"] == 48
    assert i.description == "Wan 2.2 TI2V 5B DiT, bf16, 5.00B parameters"


def test_comfyui_prefix_is_accepted_and_reported(tmp_path):
    p = fabricate.write_dit(tmp_path / "wan2.1_t2v_1.3B_bf16.safetensors", size="1.3B", family="wan2.1",
                            prefix="model.diffusion_model.")
    i = identify(p)
    assert (i.kind, i.size, i.variant, i.key_prefix, i.layout_ok) == ("dit", "1.3B", "t2v", "model.diffusion_model.", True)
    assert any("model.diffusion_model." in n and "strips" in n for n in i.notes)


@pytest.mark.parametrize("name,hint", [
    ("wan2.2_t2v_high_noise_14B_fp16.safetensors", "high"),
    ("wan2.2_t2v_low_noise_14B_fp16.safetensors", "low"),
    ("Wan22-T2V-HighNoise-Q8.safetensors", "high"),
    ("wan22_LowNoise.safetensors", "low"),
    ("my_wan_high.safetensors", "high"),
    ("t2v-low-14b.safetensors", "low"),
    ("wan2.2_t2v_14B.safetensors", None),
    ("highlight_lowkey.safetensors", None),  # words that merely contain high/low
    ("high_and_low_noise.safetensors", None),  # both: ambiguous
    ("high_noise_model/diffusion_pytorch_model.safetensors", "high"),  # upstream's folder layout
])
def test_expert_hint_from_the_name(tmp_path, name, hint):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    fabricate.write_dit(p)
    i = identify(p)
    assert i.expert_hint == hint
    if name.startswith("high_and_low"):
        assert any("both high and low" in n for n in i.notes)


def test_release_hint_for_t2v_14b(tmp_path):
    a = identify(fabricate.write_dit(tmp_path / "wan2.1_t2v_14B_bf16.safetensors", family="wan2.1"))
    b = identify(fabricate.write_dit(tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors", dtype="fp16"))
    c = identify(fabricate.write_dit(tmp_path / "t2v_14B.safetensors"))
    assert (a.family, b.family, c.family) == ("wan2.1", "wan2.2", None)
    assert any("same layout, and the name does not say" in n for n in c.notes)
    assert a.expert_hint is None  # Wan 2.1 has no experts, whatever its name says


def test_vae_and_t5(tmp_path):
    v21 = identify(fabricate.write_vae(tmp_path / "wan_2.1_vae.safetensors"))
    v22 = identify(fabricate.write_vae(tmp_path / "wan2.2_vae.safetensors", version="2.2"))
    assert (v21.kind, v21.vae_version, v21.arch["z_dim"], v21.layout_ok) == ("vae", "2.1", 16, True)
    assert (v22.kind, v22.vae_version, v22.arch["z_dim"], v22.family) == ("vae", "2.2", 48, "wan2.2")
    t_wan = identify(fabricate.write_t5(tmp_path / "t5.safetensors"))
    t_hf = identify(fabricate.write_t5(tmp_path / "umt5_xxl_fp16.safetensors", fmt="hf", dtype="fp16"))
    assert (t_wan.kind, t_wan.t5_format, t_wan.dtype, t_wan.layout_ok) == ("t5", "wan", "bf16", True)
    assert (t_hf.kind, t_hf.t5_format, t_hf.dtype, t_hf.arch["vocab"]) == ("t5", "hf", "fp16", 256384)
    assert t_wan.arch["layers"] == t_hf.arch["layers"] == 24


def test_wan_t5_with_encoder_prefix_is_wan_format(tmp_path):
    # musubi removes every "encoder." before its strict load, so such a file loads as Wan format
    p = write_safetensors(tmp_path / "t5.safetensors", [("encoder." + n, "BF16", s) for n, s in t5_layout("wan")])
    i = identify(p)
    assert (i.kind, i.t5_format, i.layout_ok) == ("t5", "wan", True)


def test_flux_t5_is_not_umt5(tmp_path):
    p = write_safetensors(tmp_path / "t5xxl_fp16.safetensors", [
        ("shared.weight", "F16", (32128, 4096)),
        ("encoder.block.0.layer.0.SelfAttention.q.weight", "F16", (4096, 4096))])
    i = identify(p)
    assert i.kind == "t5" and i.arch["vocab"] == 32128 and any("not umT5" in n for n in i.notes)


def test_lora_clip_and_unknown(tmp_path):
    lora = write_safetensors(tmp_path / "lora.safetensors", [
        (f"lora_unet_blocks_{b}_{m}.{part}", "BF16", shape)
        for b in range(2) for m in ("self_attn_q", "cross_attn_k_img")
        for part, shape in (("lora_down.weight", (32, 5120)), ("lora_up.weight", (5120, 32)), ("alpha", ()))])
    i = identify(lora)
    assert (i.kind, i.size, i.variant, i.arch["rank"], i.arch["modules"]) == ("lora", "14B", "i2v", 32, 4)
    clip = write_safetensors(tmp_path / "clip_vision_h.safetensors", [
        ("vision_model.encoder.layers.31.layer_norm1.weight", "F16", (1280,))])
    assert identify(clip).kind == "clip"
    other = write_safetensors(tmp_path / "sd15.safetensors", [("cond_stage_model.x.weight", "F16", (4, 4))])
    u = identify(other)
    assert (u.kind, u.dtype, u.params) == ("unknown", "fp16", 16)
    assert u.description == "not a recognised WAN model file, fp16, 16 parameters"


def test_layout_mismatch_is_reported(tmp_path):
    from kohyawan.modelfiles.layouts import dit_layout

    entries = [(n, "BF16", s) for n, s in dit_layout("14B", "t2v", "wan2.2") if n != "blocks.39.ffn.2.bias"]
    entries.append(("vace_blocks.0.x.weight", "BF16", (4, 4)))
    i = identify(write_safetensors(tmp_path / "odd.safetensors", entries))
    assert i.kind == "dit" and i.layout_ok is False
    note = next(n for n in i.notes if n.startswith("differs"))
    assert "1 missing (e.g. blocks.39.ffn.2.bias)" in note and "1 unexpected (e.g. vace_blocks.0.x.weight)" in note


# ---- torch .pth files, read without unpickling --------------------------------------------------

def _torch_save(path, layout, prefix=""):
    torch = pytest.importorskip("torch")
    # expand(): a full-shaped view over one element, so the file stays tiny but records the real shapes
    torch.save({prefix + n: torch.zeros(1, dtype=torch.bfloat16).expand(s) for n, s in layout}, path)
    return path


def test_pth_vae_and_t5_read_without_unpickling(tmp_path):
    v = identify(_torch_save(tmp_path / "Wan2.1_VAE.pth", vae_layout("2.1")))
    assert (v.kind, v.vae_version, v.layout_ok, v.file_format, v.dtype) == ("vae", "2.1", True, "torch-pickle", "bf16")
    t = identify(_torch_save(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", t5_layout("wan")))
    assert (t.kind, t.t5_format, t.layout_ok, t.params) == ("t5", "wan", True, 5680910336)


def test_pth_with_a_malicious_reduce_is_never_executed(tmp_path):
    import pickle
    import zipfile

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pth"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ModelFileError, match="without a state dict"):
        identify(p)
    assert not marker.exists()


def test_broken_zip_is_one_line(tmp_path):
    p = tmp_path / "cut.pth"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(ModelFileError, match=r"cut.pth: corrupt or truncated .pth file"):
        identify(p)


# ---- broken files: one clear line each ------------------------------------------------------------

def _err(path) -> str:
    with pytest.raises(ModelFileError) as exc:
        identify(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(os.path.basename(path)) in msg
    return msg


def test_zero_byte_text_and_missing(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert _err(tmp_path / "empty.safetensors").endswith("not a safetensors file (empty)")
    (tmp_path / "notes.txt").write_text("this is a text file, not a model\n")
    assert "not a safetensors file" in _err(tmp_path / "notes.txt")
    assert _err(tmp_path / "gone.safetensors").endswith("gone.safetensors: no such file")
    (tmp_path / "folder.safetensors").mkdir()
    assert "is a folder" in _err(tmp_path / "folder.safetensors")


def test_truncated_download(tmp_path):
    p = fabricate.write_dit(tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors", dtype="fp16")
    full = p.stat().st_size
    os.truncate(p, full // 3)
    msg = _err(p)
    assert f"truncated: the header describes {full} bytes, the file has {full // 3}" in msg


def test_header_that_lies_about_its_length(tmp_path):
    body = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(struct.pack("<Q", len(body) + 1000) + body + b"\0" * 8)
    assert "header of" in _err(longer) and "announced" in _err(longer)
    shorter = tmp_path / "shorter.safetensors"
    shorter.write_bytes(struct.pack("<Q", len(body) - 5) + body + b"\0" * 8)
    assert "header is not JSON" in _err(shorter)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**62) + body)
    assert "plausible header length" in _err(huge)


def test_corrupt_entries(tmp_path):
    def write(doc):
        raw = json.dumps(doc).encode()
        p = tmp_path / "c.safetensors"
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
        return p

    assert "not a JSON object" in _err(write([1, 2]))
    assert "tensor 'a'" in _err(write({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}))
    assert "does not match its shape" in _err(write({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4]}}))
    assert "tensor 'a'" in _err(write({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}))


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    p = fabricate.write_vae(tmp_path / "locked.safetensors")
    p.chmod(0)
    try:
        assert _err(p).endswith("permission denied")
    finally:
        p.chmod(0o644)


@pytest.mark.parametrize("name", [
    "my model (v2) 'high' noise.safetensors", 'quote"d $(touch pwned) `x`.safetensors',
    "模型_低噪声_low_noise.safetensors", "back\\slash;rm -rf.safetensors"])
def test_hostile_file_names(tmp_path, name):
    p = fabricate.write_dit(tmp_path / name, variant="i2v")
    i = identify(p)
    assert i.path == str(p) and i.kind == "dit" and i.variant == "i2v"
    assert not (tmp_path / "pwned").exists()


def test_newline_in_a_name_stays_one_line(tmp_path):
    p = tmp_path / "two\nlines.safetensors"
    p.write_bytes(b"")
    with pytest.raises(ModelFileError) as exc:
        identify(p)
    assert "\n" not in str(exc.value) and "two\\nlines" in str(exc.value)


def test_full_size_14b_header_is_fast(tmp_path):
    p = fabricate.write_dit(tmp_path / "d.safetensors", variant="i2v", family="wan2.1")
    t0 = time.perf_counter()
    identify(p)
    # generous bound for a shared CI box; the measured figure is in notes/modelfiles.md
    assert time.perf_counter() - t0 < 2.0


def test_other_formats_get_a_specific_line(tmp_path):
    gguf = tmp_path / "wan2.2_t2v_high_noise_14B_Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\3\0\0\0" + b"\0" * 64)
    assert "a GGUF file" in _err(gguf)
    old = tmp_path / "Wan2.1_VAE.pth"
    old.write_bytes(b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19." + b"\0" * 64)
    assert "old-style (non-zip) torch file" in _err(old)


def test_diffusers_layout_and_shards(tmp_path):
    p = write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", [
        ("blocks.0.attn1.to_q.weight", "BF16", (5120, 5120)),
        ("condition_embedder.time_embedder.linear_1.weight", "BF16", (5120, 256))])
    i = identify(p)
    assert (i.kind, i.size, i.layout_ok) == ("dit", "14B", False) and "Diffusers layout" in i.notes[0]
    from kohyawan.modelfiles.layouts import dit_layout

    first = [(n, "BF16", s) for n, s in dit_layout("14B", "t2v", "wan2.2") if n.startswith(("blocks.0.", "patch"))]
    shard = write_safetensors(tmp_path / "diffusion_pytorch_model-00001-of-00006.safetensors", first)
    j = identify(shard)
    assert j.kind == "dit" and j.layout_ok is False and any("one shard" in n for n in j.notes)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert _err(fifo).endswith("pipe.safetensors: not a regular file")
