"""Do the given model files fit the task? Every refusal is one line naming the file and the fix."""

import pytest

from kohyawan.modelfiles import standins as fabricate
from kohyawan.errors import ModelFileError
from kohyawan.modelfiles.check import check_infos, check_models
from kohyawan.modelfiles.identify import identify


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    f = fabricate
    made = {
        "t2v_high": f.write_dit(d / "wan2.2_t2v_high_noise_14B_fp16.safetensors", dtype="fp16"),
        "t2v_low": f.write_dit(d / "wan2.2_t2v_low_noise_14B_fp16.safetensors", dtype="fp16"),
        "t2v_low_bf16": f.write_dit(d / "wan2.2_t2v_low_noise_14B_bf16.safetensors"),
        "t2v_plain": f.write_dit(d / "t2v_14B_expert.safetensors"),
        "i2v22_high": f.write_dit(d / "wan2.2_i2v_high_noise_14B_fp16.safetensors", variant="i2v", dtype="fp16"),
        "i2v22_low": f.write_dit(d / "wan2.2_i2v_low_noise_14B_fp16.safetensors", variant="i2v", dtype="fp16"),
        "i2v21": f.write_dit(d / "wan2.1_i2v_720p_14B_bf16.safetensors", variant="i2v", family="wan2.1"),
        "t2v21": f.write_dit(d / "wan2.1_t2v_14B_bf16.safetensors", family="wan2.1"),
        "t2v13": f.write_dit(d / "wan2.1_t2v_1.3B_bf16.safetensors", size="1.3B", family="wan2.1"),
        "ti2v5": f.write_dit(d / "wan2.2_ti2v_5B_fp16.safetensors", size="5B", dtype="fp16"),
        "scaled": f.write_dit(d / "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", dtype="fp8_scaled"),
        "fp8_low": f.write_dit(d / "wan2.2_t2v_low_noise_14B_fp8_e4m3fn.safetensors", dtype="fp8_e4m3fn"),
        "fp8_high": f.write_dit(d / "wan2.2_t2v_high_noise_14B_fp8_e4m3fn.safetensors", dtype="fp8_e4m3fn"),
        "e5m2": f.write_dit(d / "wan2.2_t2v_low_noise_14B_fp8_e5m2.safetensors", dtype="fp8_e5m2"),
        "fp32_13": f.write_dit(d / "wan2.1_t2v_1.3B_fp32.safetensors", size="1.3B", family="wan2.1", dtype="fp32"),
        "vae21": f.write_vae(d / "wan_2.1_vae.safetensors"),
        "vae22": f.write_vae(d / "wan2.2_vae.safetensors", version="2.2"),
        "t5": f.write_t5(d / "umt5-xxl-enc-bf16.safetensors"),
        "t5hf": f.write_t5(d / "umt5_xxl_fp16.safetensors", fmt="hf", dtype="fp16"),
    }
    return {k: identify(v) for k, v in made.items()}


def _ok(files, task="t2v-A14B", expert="both", **kw):
    args = dict(dit=files["t2v_low"], dit_high_noise=files["t2v_high"], vae=files["vae21"], t5=files["t5"],
                mixed_precision="fp16")
    args.update(kw)
    return check_infos(task, expert, **args)


def _bad(files, *a, **kw) -> str:
    with pytest.raises(ModelFileError) as exc:
        _ok(files, *a, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_good_dual_expert_set_has_no_warnings(files):
    assert _ok(files) == []
    assert _ok(files, expert="sequential") == []


def test_good_i2v_a14b_and_wan21_tasks(files):
    assert _ok(files, task="i2v-A14B", dit=files["i2v22_low"], dit_high_noise=files["i2v22_high"]) == []
    assert _ok(files, task="i2v-14B", dit=files["i2v21"], dit_high_noise=None, mixed_precision="bf16") == []
    assert _ok(files, task="t2v-1.3B", dit=files["t2v13"], dit_high_noise=None, mixed_precision="bf16") == []
    # an fp32 DiT has no mixed-precision assertion in musubi (the CPU rehearsal setup uses one)
    assert _ok(files, task="t2v-1.3B", dit=files["fp32_13"], dit_high_noise=None, mixed_precision="bf16") == []


def test_5b_and_1_3b_dit_for_a_14b_task(files):
    msg = _bad(files, dit=files["ti2v5"])
    assert msg.startswith("--dit ") and "wan2.2_ti2v_5B_fp16.safetensors: is a Wan 2.2 TI2V 5B DiT" in msg
    assert "task t2v-A14B trains the 14B model" in msg and "use wan2.2_t2v_high_noise_14B_fp16" in msg
    assert "1.3B DiT" in _bad(files, dit_high_noise=files["t2v13"])
    assert "trains the 1.3B model" in _bad(files, task="t2v-1.3B", dit=files["t2v21"], dit_high_noise=None,
                                           mixed_precision="bf16")


def test_t2v_for_i2v_and_back(files):
    msg = _bad(files, task="i2v-A14B", dit=files["t2v_low"], dit_high_noise=files["i2v22_high"])
    assert "is a Wan 2.2 T2V 14B DiT, but task i2v-A14B needs an I2V DiT" in msg
    msg = _bad(files, dit=files["i2v22_low"])
    assert "needs a T2V DiT" in msg


def test_wan21_i2v_for_i2v_a14b_and_back(files):
    msg = _bad(files, task="i2v-A14B", dit=files["i2v21"], dit_high_noise=files["i2v22_high"], mixed_precision="bf16")
    assert "is a Wan 2.1 I2V 14B DiT, but task i2v-A14B needs the Wan 2.2 model" in msg and "img_emb" in msg
    msg = _bad(files, task="i2v-14B", dit=files["i2v22_low"], dit_high_noise=None)
    assert "needs the Wan 2.1 model" in msg


def test_wan22_vae_for_a_14b_task(files):
    msg = _bad(files, vae=files["vae22"])
    assert msg == (f"--vae {files['vae22'].path}: is the Wan 2.2 VAE (48 latent channels), which belongs to the 5B "
                   f"model; task t2v-A14B uses the Wan 2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)")
    assert "is a DiT, not a VAE" in _bad(files, vae=files["t2v_low"])


def test_fp8_scaled_never_loads(files):
    for kw in ({}, {"fp8_base": True}, {"fp8_base": True, "fp8_scaled": True}):
        msg = _bad(files, dit=files["scaled"], **kw)
        assert "ComfyUI fp8_scaled checkpoint, which musubi-tuner cannot load" in msg


def test_precision_matrix(files):
    # fp16 checkpoint: mixed precision fp16 (or no); fp8_base and fp8_base+scaled also fine
    for kw in ({}, {"fp8_base": True}, {"fp8_base": True, "fp8_scaled": True}, {"mixed_precision": "no"}):
        assert _ok(files, **kw) == []
    assert "an fp16 checkpoint trains with mixed_precision fp16" in _bad(files, mixed_precision="bf16")
    # bf16 checkpoint: bf16 or fp8_base(+scaled), never fp16
    bf = dict(dit=files["t2v_low_bf16"], dit_high_noise=None, expert="low", mixed_precision="bf16")
    assert _ok(files, **bf) == []
    assert _ok(files, **{**bf, "fp8_base": True, "fp8_scaled": True}) == []
    assert "a bf16 checkpoint trains with mixed_precision bf16" in _bad(files, **{**bf, "mixed_precision": "fp16"})
    # plain fp8_e4m3fn: only fp8_base without fp8_scaled
    f8 = dict(dit=files["fp8_low"], dit_high_noise=files["fp8_high"], mixed_precision="bf16")
    assert _ok(files, **f8, fp8_base=True) == []
    assert "only with fp8_base=true and fp8_scaled=false" in _bad(files, **f8)
    assert "only with fp8_base=true and fp8_scaled=false" in _bad(files, **f8, fp8_base=True, fp8_scaled=True)
    assert "not in musubi-tuner's support matrix" in _bad(files, dit=files["e5m2"], fp8_base=True)
    assert "fp8_scaled needs fp8_base" in _bad(files, fp8_scaled=True)


def test_hf_t5_where_wan_format_is_needed(files):
    msg = _bad(files, t5=files["t5hf"])
    assert "Hugging Face/ComfyUI-format umT5" in msg and "models_t5_umt5-xxl-enc-bf16.pth" in msg
    assert "is a VAE" in _bad(files, t5=files["vae21"])


def test_dual_expert_needs_both_dits(files):
    msg = _bad(files, dit_high_noise=None)
    assert "give the low-noise DiT as --dit and the high-noise DiT as --dit-high-noise (--dit-high-noise is missing)" in msg
    assert "(--dit is missing)" in _bad(files, expert="sequential", dit=None)
    assert "needs the low-noise DiT (--dit)" in _bad(files, expert="low", dit=None)
    assert "needs the high-noise DiT" in _bad(files, expert="high", dit=None, dit_high_noise=None)
    assert "same file" in _bad(files, dit_high_noise=files["t2v_low"], dit=files["t2v_low"])
    assert "applies only to t2v-A14B and i2v-A14B" in _bad(files, task="t2v-14B", dit=files["t2v21"],
                                                          mixed_precision="bf16")


def test_expert_name_warnings(files):
    swapped = _ok(files, dit=files["t2v_high"], dit_high_noise=files["t2v_low"])
    assert len(swapped) == 2 and "name says high-noise expert, but it is given as the low-noise one" in swapped[0]
    vague = _ok(files, dit=files["t2v_plain"], mixed_precision="bf16", dit_high_noise=None, expert="low")
    assert len(vague) == 1 and "does not say high or low noise" in vague[0]
    high_only = _ok(files, expert="high", dit=None)
    assert high_only == []
    low_only = _ok(files, expert="low")
    assert low_only == [f"expert 'low' trains only --dit; {files['t2v_high'].path} (--dit-high-noise) is not used"]


def test_wan21_t2v_named_file_for_a_wan22_task_warns(files):
    w = _ok(files, dit=files["t2v21"], dit_high_noise=None, expert="low", mixed_precision="bf16")
    assert any("its name says wan2.1" in x for x in w)


def test_unknown_task_and_expert(files):
    assert "unknown task 'ti2v-5B'" in _bad(files, task="ti2v-5B")
    assert "unknown expert mode" in _bad(files, expert="middle")


def test_check_models_reads_files_and_names_the_option(tmp_path, files):
    warnings = check_models("t2v-A14B", "both", dit=files["t2v_low"].path, dit_high_noise=files["t2v_high"].path,
                            vae=files["vae21"].path, t5=files["t5"].path, mixed_precision="fp16")
    assert warnings == []
    (tmp_path / "half.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{")
    with pytest.raises(ModelFileError) as exc:
        check_models("t2v-A14B", "both", dit=files["t2v_low"].path, dit_high_noise=tmp_path / "half.safetensors",
                     vae=None, t5=None, mixed_precision="fp16")
    assert str(exc.value).startswith(f"--dit-high-noise {tmp_path / 'half.safetensors'}: not a safetensors file")
    with pytest.raises(ModelFileError, match=r"^--vae .*missing.safetensors: no such file$"):
        check_models("t2v-A14B", "both", dit=files["t2v_low"].path, dit_high_noise=files["t2v_high"].path,
                     vae=tmp_path / "missing.safetensors", t5=None, mixed_precision="fp16")


def test_dit_as_pth_or_diffusers_is_refused(tmp_path, files):
    torch = pytest.importorskip("torch")
    from kohyawan.modelfiles.standins import write_safetensors
    from kohyawan.modelfiles.layouts import dit_layout

    p = tmp_path / "wan21_t2v_1.3B.pth"
    torch.save({n: torch.zeros(1, dtype=torch.bfloat16).expand(s) for n, s in dit_layout("1.3B", "t2v", "wan2.1")}, p)
    info = identify(p)
    assert info.kind == "dit" and info.layout_ok is True
    with pytest.raises(ModelFileError, match="reads the DiT from a .safetensors file only"):
        check_infos("t2v-1.3B", "both", dit=info, dit_high_noise=None, vae=None, t5=None)
    d = write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", [
        ("blocks.0.attn1.to_q.weight", "BF16", (5120, 5120)),
        ("condition_embedder.time_embedder.linear_1.weight", "BF16", (5120, 256))])
    with pytest.raises(ModelFileError, match="Diffusers layout"):
        check_infos("t2v-A14B", "low", dit=identify(d), dit_high_noise=None, vae=None, t5=None)
