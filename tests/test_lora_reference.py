"""convert / resize / merge against what the tools made before issue 13 rewrote their I/O and resize's SVD.

The reference outputs in fixtures/lora_reference were written by kohyawan commit ca066ea from the inputs
beside them (``make_reference.py`` says how). Convert must reproduce them bit for bit, merge to 1e-6;
resize may pick other signs for the singular vectors, so its updates are compared, to within the energy
the tool reports; metadata must be the same keys and values, hashes included.
"""

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the LoRA tools need torch; the Python 3.10 CI run has none
from safetensors import safe_open  # noqa: E402

from kohyawan.lora.convert import convert_file
from kohyawan.files.safetensors import data_hash
from kohyawan.lora.io import read_header
from kohyawan.lora.merge import merge_files
from kohyawan.lora.resize import resize_file

REF = Path(__file__).parent / "fixtures" / "lora_reference"
RESULTS = json.loads((REF / "results.json").read_text())["results"]


def load(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture()
def inputs(tmp_path):
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        shutil.copyfile(REF / name, tmp_path / name)
    return tmp_path


def same_metadata(got: dict, want: dict, skip=()):
    assert got.keys() == want.keys()
    for key in set(want) - set(skip):
        if key.startswith("kohyawan.") and key.endswith("_from"):
            g, w = json.loads(got[key]), json.loads(want[key])
            if "retained_energy" in w:  # its last digits depend on the order sums were taken in
                assert float(g.pop("retained_energy")) == pytest.approx(float(w.pop("retained_energy")), abs=2e-6)
            assert g == w, key
        else:
            assert got[key] == want[key], key


def result(r, name):
    d = r.to_dict()
    d["path"], d["source"] = Path(d["path"]).name, Path(d.get("source", "")).name
    d.pop("device", None)
    if "inputs" in d:
        for i in d["inputs"]:
            i["file"] = Path(i["file"]).name
    want = dict(RESULTS[name])
    if "source" not in want:
        d.pop("source")
    return d, want


@pytest.mark.parametrize("name, src, kw", [
    ("convert_a_comfy", "a", {"to": "comfy"}),
    ("convert_a_comfy_bf16_keep", "a", {"to": "comfy", "dtype": "bf16", "keep_alpha": True}),
    ("convert_b_comfy_fp32", "b", {"to": "comfy", "dtype": "fp32"}),
    ("convert_c_musubi", "c", {"to": "musubi"}),
])
def test_convert_is_bit_identical_to_the_reference(inputs, name, src, kw):
    out = inputs / f"{name}.safetensors"
    got_result, want_result = result(convert_file(inputs / f"{src}.safetensors", out, **kw), name)
    assert got_result == want_result
    got, got_meta = load(out)
    want, want_meta = load(REF / f"{name}.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    same_metadata(got_meta, want_meta)
    assert out.read_bytes() == (REF / f"{name}.safetensors").read_bytes()


@pytest.mark.parametrize("name, parts, kw", [
    ("merge_ab", [("a", 0.9), ("b", -0.8)], {}),
    ("merge_ac_bf16", [("a", 1.0), ("c", 0.5)], {"dtype": "bf16"}),
])
def test_merge_matches_the_reference(inputs, name, parts, kw):
    out = inputs / f"{name}.safetensors"
    r = merge_files([(inputs / f"{p}.safetensors", w) for p, w in parts], out, **kw)
    got_result, want_result = result(r, name)
    assert got_result == want_result
    got, got_meta = load(out)
    want, want_meta = load(REF / f"{name}.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype
        assert torch.allclose(got[k].double(), want[k].double(), rtol=1e-6, atol=1e-6 * float(want[k].abs().max())), k
    same_metadata(got_meta, want_meta)


def updates(tensors: dict) -> dict:
    """module base -> the dense update scale * up @ down (toy sizes: dense is cheap) in float64."""
    out = {}
    for key in tensors:
        if key.endswith(".lora_up.weight"):
            base = key[: -len(".lora_up.weight")]
            up, down = tensors[key].double(), tensors[base + ".lora_down.weight"].double()
            alpha = tensors.get(base + ".alpha")
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            out[base] = scale * up @ down
    return out


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, src, kw", [
    ("resize_a_3", "a", {"rank": 3}),
    ("resize_b_2", "b", {"rank": 2}),
    ("resize_c_2_fp32", "c", {"rank": 2, "dtype": "fp32"}),
])
def test_resize_matches_the_reference_within_the_reported_energy(inputs, name, src, kw, device):
    out = inputs / f"{name}.safetensors"
    r = resize_file(inputs / f"{src}.safetensors", out, device=device, **kw)
    assert r.device == device
    got_result, want_result = result(r, name)
    for d in (got_result, want_result):  # compared below with a tolerance
        d.pop("retained"), d.pop("min_retained")
        d["modules"] = [dict(m, retained=round(m["retained"], 5)) for m in d["modules"]]
    assert got_result == want_result
    assert r.retained == pytest.approx(RESULTS[name]["retained"], abs=1e-6)
    got, got_meta = load(out)
    want, want_meta = load(REF / f"{name}.safetensors")
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    source = updates(load(inputs / f"{src}.safetensors")[0])
    new, ref = updates(got), updates(want)
    for base, a in new.items():
        original = source[base]
        dropped = float((original - ref[base]).square().sum())   # what the reference left out
        assert float((original - a).square().sum()) == pytest.approx(dropped, rel=1e-4, abs=1e-9)
        # both are the best rank-k approximation: equal up to the precision of the stored dtype
        tol = 1e-2 if got[base + ".lora_up.weight"].dtype == torch.bfloat16 else 1e-5
        assert float((a - ref[base]).norm()) <= tol * float(original.norm()), base
    # other singular-vector signs are other bytes: musubi's hash describes this file's data
    same_metadata(got_meta, want_meta, skip=("sshs_model_hash",))
    assert got_meta["sshs_model_hash"] == data_hash(read_header(out))
