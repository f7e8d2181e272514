"""convert / resize / merge: the dense updates ComfyUI would apply are compared, not just the keys."""

import json
from pathlib import Path

import pytest
torch = pytest.importorskip("torch")  # the LoRA tools need torch; the Python 3.10 CI run has none
from safetensors.torch import load_file

from kohyawan.errors import BadInput
from kohyawan.lora import keys as K
from kohyawan.lora.convert import convert_file
from kohyawan.lora.fabricate import write_lora
from kohyawan.lora.inspect import read_info
from kohyawan.files.safetensors import data_hash
from kohyawan.lora.io import read_header
from kohyawan.lora.merge import merge_files, parse_weighted
from kohyawan.lora.resize import resize_file
from kohyawan.lora.verify import verify_file

SMALL = "t2v-1.3B"  # tensor tests use 1.3B shapes: dense float64 updates of 14B FFN modules cost gigabytes


def factors(path):
    """module path -> (scale * up, down) in float64."""
    sd = {k: v.to(torch.float64) for k, v in load_file(path).items()}
    out = {}
    for target, suffixes in K.group_targets(list(sd)).items():
        up_key, down_key = K.lora_pair(suffixes)
        down = sd[down_key]
        scale = sd[suffixes["alpha"]].item() / down.shape[0] if "alpha" in suffixes else 1.0
        out[K.module_path(target)] = (scale * sd[up_key], down)
    return out


def combined(parts):
    """(weight, (scaled up, down)) pairs -> one factor pair whose product is the weighted sum."""
    ups = [w * u for w, (u, _) in parts]
    downs = [d for _, (_, d) in parts]
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def dense_or_gram_diff(a, b):
    """(||A - B||_F, ||A||_F) for factor pairs A = ua @ da, B = ub @ db.

    Attention-sized modules are compared as dense matrices (what ComfyUI adds to the weight); FFN-sized
    ones through Gram matrices, the same number without forming 1536 x 8960 float64 matrices."""
    (ua, da), (ub, db) = a, b
    if ua.shape[0] * da.shape[1] <= 1536 * 1536:
        wa, wb = ua @ da, ub @ db
        return float(torch.linalg.matrix_norm(wa - wb)), float(torch.linalg.matrix_norm(wa))
    u, d = torch.cat([ua, -ub], dim=1), torch.cat([da, db], dim=0)
    diff2 = float(((u.T @ u) * (d @ d.T)).sum())
    norm2 = float(((ua.T @ ua) * (da @ da.T)).sum())
    return max(diff2, 0.0) ** 0.5, norm2 ** 0.5


def assert_same_updates(a, b, rtol=1e-6):
    fa, fb = factors(a), factors(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        diff, norm = dense_or_gram_diff(fa[k], fb[k])
        assert diff <= rtol * norm, (k, diff, norm)


def test_convert_round_trip_keeps_every_update_and_the_metadata(tmp_path):
    src = write_lora(tmp_path / "src.safetensors", rank=4, alpha=2.0, dtype="fp32", blocks=[0, 7], task=SMALL,
                     metadata={"kohyawan.task": SMALL, "ss_datasets": json.dumps([{"n": "é"}])})
    comfy = tmp_path / "comfy.safetensors"
    result = convert_file(src, comfy, to="comfy")
    assert result.alpha_folded and result.keys == 40
    keys = set(load_file(comfy))
    assert "diffusion_model.blocks.7.ffn.2.lora_A.weight" in keys and not any(k.endswith("alpha") for k in keys)
    assert verify_file(comfy, SMALL).ok
    assert_same_updates(src, comfy)
    back = tmp_path / "back.safetensors"
    convert_file(comfy, back, to="musubi")
    assert set(load_file(back)) == set(load_file(src))
    assert_same_updates(src, back)
    meta_src, meta_back = read_header(src).metadata, read_header(back).metadata
    for key, value in meta_src.items():
        if not key.startswith("sshs_"):
            assert meta_back[key] == value, key
    fact = json.loads(meta_back["kohyawan.converted_from"])
    assert fact["file"] == "comfy.safetensors" and fact["naming"] == "diffusion_model"
    assert fact["previous"]["file"] == "src.safetensors" and fact["previous"]["to"] == "comfy"
    # weights changed (alpha folded) so the musubi hash describes the new data
    assert read_header(comfy).metadata["sshs_model_hash"] == data_hash(read_header(comfy))
    assert read_header(comfy).metadata["sshs_model_hash"] != meta_src["sshs_model_hash"]


def test_convert_dtype_and_keep_alpha(tmp_path):
    src = write_lora(tmp_path / "src.safetensors", rank=4, alpha=8.0, dtype="fp32", blocks=[1], task=SMALL)
    out = tmp_path / "bf16.safetensors"
    convert_file(src, out, to="comfy", dtype="bf16", keep_alpha=True)
    assert read_info(out).dtype == "bf16" and read_info(out).alpha == 8.0
    assert_same_updates(src, out, rtol=1e-2)
    # an identity conversion reproduces musubi's own hash
    same = tmp_path / "same.safetensors"
    convert_file(src, same, to="musubi")
    assert read_header(same).metadata["sshs_model_hash"] == read_header(src).metadata["sshs_model_hash"]
    assert read_header(same).metadata["sshs_legacy_hash"] == read_header(src).metadata["sshs_legacy_hash"]
    with pytest.raises(BadInput, match="new file"):
        convert_file(src, src, to="comfy")


def test_resize_reports_energy_and_is_exact_when_the_rank_allows(tmp_path):
    src = write_lora(tmp_path / "src.safetensors", rank=6, alpha=3.0, dtype="fp32", blocks=[2], task=SMALL)
    out = tmp_path / "r2.safetensors"
    result = resize_file(src, out, rank=2)
    assert (result.rank, result.new_rank, len(result.modules)) == (6, 2, 10)
    before, after = factors(src), factors(out)
    total = kept = 0.0
    for m in result.modules:
        u, d = before[m.module]
        # sigma^2 of u @ d are the eigenvalues of L^T (d d^T) L with u^T u = L L^T (independent of the QR route)
        chol = torch.linalg.cholesky(u.T @ u)
        s2 = torch.linalg.eigvalsh(chol.T @ (d @ d.T) @ chol).flip(0).clamp(min=0)
        assert m.retained == pytest.approx(float(s2[:2].sum() / s2.sum()), rel=1e-6)
        total, kept = total + float(s2.sum()), kept + float(s2[:2].sum())
        # best rank-2 approximation (Eckart-Young): the error is exactly the dropped singular values
        u2, d2 = after[m.module]
        a, b = torch.cat([u, -u2], dim=1), torch.cat([d, d2], dim=0)
        err2 = float(((a.T @ a) * (b @ b.T)).sum())
        assert err2 == pytest.approx(float(s2[2:].sum()), rel=1e-4)
    assert result.retained == pytest.approx(kept / total, rel=1e-6)
    info = read_info(out)
    assert info.rank == 2 and info.alpha == 1.0  # alpha * 2/6 keeps the old scale 0.5
    assert info.metadata["ss_network_dim"] == "2" and info.metadata["ss_network_alpha"] == "1.0"
    fact = json.loads(info.metadata["kohyawan.resized_from"])
    assert fact["rank"] == 6 and float(fact["retained_energy"]) == pytest.approx(result.retained, abs=1e-6)
    assert info.metadata["sshs_model_hash"] == data_hash(read_header(out))
    # a merge of two rank-2 LoRAs is rank 4 but its update has rank 4; resizing to 4 keeps all of it
    a = write_lora(tmp_path / "a.safetensors", rank=2, dtype="fp32", blocks=[0], task=SMALL)
    b = write_lora(tmp_path / "b.safetensors", rank=2, dtype="fp32", blocks=[0], seed=3, task=SMALL)
    merge_files([(a, 1.0), (b, 1.0)], tmp_path / "ab.safetensors")
    exact = resize_file(tmp_path / "ab.safetensors", tmp_path / "ab3.safetensors", rank=3)
    assert exact.retained < 1.0
    with pytest.raises(BadInput, match="resize only lowers the rank"):
        resize_file(src, tmp_path / "r9.safetensors", rank=6)


def test_merge_is_exactly_the_weighted_sum(tmp_path):
    a = write_lora(tmp_path / "a.safetensors", rank=4, alpha=2.0, dtype="fp32", blocks=[0, 1], task=SMALL,
                   metadata={"kohyawan.task": SMALL, "kohyawan.notes": "first"})
    b = write_lora(tmp_path / "b.safetensors", rank=3, alpha=16.0, dtype="fp32", blocks=[1, 2], seed=1, task=SMALL,
                   metadata={"kohyawan.task": SMALL, "kohyawan.notes": "second"})
    out = tmp_path / "ab.safetensors"
    result = merge_files([(a, 0.9), (b, -0.8)], out)
    fa, fb, fm = factors(a), factors(b), factors(out)
    assert set(fm) == set(fa) | set(fb)
    for k in fm:
        want = combined([(w, f[k]) for w, f in ((0.9, fa), (-0.8, fb)) if k in f])
        diff, norm = dense_or_gram_diff(fm[k], want)
        assert diff <= 1e-6 * norm, (k, diff, norm)
    assert result.modules == 30 and verify_file(out, SMALL).ok
    meta = read_header(out).metadata
    assert meta["kohyawan.notes"] == "first" and meta["kohyawan.task"] == SMALL
    fact = json.loads(meta["kohyawan.merged_from"])
    assert [i["weight"] for i in fact["inputs"]] == [0.9, -0.8]
    assert fact["inputs"][1]["metadata"]["kohyawan.notes"] == "second"


def test_merge_refuses_different_models(tmp_path):
    a = write_lora(tmp_path / "a.safetensors", rank=2, blocks=[0])
    small = write_lora(tmp_path / "s.safetensors", rank=2, blocks=[0], task="t2v-1.3B")
    i2v = write_lora(tmp_path / "i.safetensors", rank=2, blocks=[0], task="i2v-14B")
    t2v21 = write_lora(tmp_path / "t.safetensors", rank=2, blocks=[0], metadata={"kohyawan.task": "t2v-14B"})
    a22 = write_lora(tmp_path / "a22.safetensors", rank=2, blocks=[0], metadata={"kohyawan.task": "t2v-A14B"})
    with pytest.raises(BadInput, match=r"cannot merge s.safetensors \(wan-1.3B\) with a.safetensors \(wan-14B\)"):
        merge_files([(a, 1), (small, 1)], tmp_path / "x.safetensors")
    with pytest.raises(BadInput, match="with image cross-attention"):
        merge_files([(a, 1), (i2v, 1)], tmp_path / "x.safetensors")
    with pytest.raises(BadInput, match="task t2v-14B"):
        merge_files([(a22, 1), (t2v21, 1)], tmp_path / "x.safetensors")
    high = write_lora(tmp_path / "x_high.safetensors", rank=2, blocks=[0])
    low = write_lora(tmp_path / "x_low.safetensors", rank=2, blocks=[0])
    with pytest.raises(BadInput, match="high-noise expert LoRA with a low-noise"):
        merge_files([(high, 1), (low, 1)], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_parse_weighted_handles_colons_in_paths():
    assert parse_weighted("a.safetensors:0.9") == (Path("a.safetensors"), 0.9)
    assert parse_weighted("C:/x/a.safetensors")[1] == 1.0
    assert parse_weighted("dir:with:colons/a.safetensors:-0.5")[1] == -0.5


def test_a_gpu_that_refuses_the_svd_is_one_line_and_leaves_no_output(tmp_path, monkeypatch):
    """A CUDA error (out of memory, a busy exclusive-mode GPU) is an error line naming --device cpu, and the
    output is never left half-written. The GPU here is simulated: torch's move to it raises what CUDA raises."""
    from kohyawan.errors import WorkFailed
    from kohyawan.lora import resize

    src = write_lora(tmp_path / "src.safetensors", rank=6, dtype="fp32", blocks=[2], task=SMALL)
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(resize, "pick_device", lambda device: "cuda")
    monkeypatch.setattr(torch.Tensor, "to", to)
    with pytest.raises(WorkFailed) as failed:
        resize_file(src, tmp_path / "out.safetensors", rank=2)
    assert str(failed.value) == ("the SVD on cuda failed (CUDA out of memory. Tried to allocate 2.00 GiB); "
                                 "--device cpu runs it on the CPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]
