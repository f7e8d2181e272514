"""Hashes computed while writing equal what musubi-tuner and a plain sha256 compute over the finished file.

musubi's ``precalculate_safetensors_hashes`` serialises the tensors with only the ``ss_*`` metadata and
hashes that (``sshs_model_hash``: its data section; ``sshs_legacy_hash``: 64 KiB at 1 MiB). ComfyUI itself
computes no hash of a LoRA file; model managers and the registry use the sha256 of the whole file. Every
expected value here is computed independently, from the finished file, by the safetensors library and
hashlib.
"""

import hashlib
import json
import struct

import pytest

torch = pytest.importorskip("torch")  # the LoRA tools need torch; the Python 3.10 CI run has none
from safetensors.torch import load_file, save  # noqa: E402

from kohyawan.lora.convert import convert_file
from kohyawan.lora.fabricate import write_lora
from kohyawan.lora.merge import merge_files
from kohyawan.lora.resize import resize_file

SMALL = "t2v-1.3B"


def musubi(path):
    """(sshs_model_hash, sshs_legacy_hash) as musubi-tuner computes them for the file's tensors and metadata."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n))["__metadata__"]
    blob = save(load_file(str(path)), {k: v for k, v in meta.items() if k.startswith("ss_")})
    (m,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(blob[8 + m:]).hexdigest(), hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def data_section_sha(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def meta(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))["__metadata__"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    # 4 blocks of 1.3B at rank 4 in fp32: 2.9 MB, so musubi's legacy window (1 MiB + 64 KiB) is tensor data
    return write_lora(tmp_path_factory.mktemp("src") / "src.safetensors", task=SMALL, rank=4, alpha=2.0,
                      dtype="fp32", blocks=range(4), metadata={"ss_steps": "300", "kohyawan.task": SMALL})


def test_the_fabricated_file_carries_musubis_hashes(src):
    m = meta(src)
    assert (m["sshs_model_hash"], m["sshs_legacy_hash"]) == musubi(src)
    assert m["sshs_model_hash"] == data_section_sha(src)


@pytest.mark.parametrize("make", [
    lambda s, d: convert_file(s, d, to="comfy"),
    lambda s, d: convert_file(s, d, to="musubi", dtype="bf16"),
    lambda s, d: resize_file(s, d, rank=2, device="cpu"),
    lambda s, d: merge_files([(s, 0.5), (s, 0.25)], d),
], ids=["convert-comfy", "convert-bf16", "resize", "merge"])
def test_tool_outputs_carry_the_hashes_musubi_computes(src, tmp_path, make):
    out = tmp_path / "out.safetensors"
    make(src, out)
    m = meta(out)
    assert (m["sshs_model_hash"], m["sshs_legacy_hash"]) == musubi(out)
    assert m["sshs_model_hash"] == data_section_sha(out)
    # the provenance records the input's sha256, hashed while the input was read
    fact = next(json.loads(v) for k, v in m.items() if k.startswith("kohyawan.") and k.endswith("_from"))
    shas = [i["sha256"] for i in fact["inputs"]] if "inputs" in fact else [fact["sha256"]]
    assert set(shas) == {hashlib.sha256(src.read_bytes()).hexdigest()}


def test_registry_copies_hash_the_bytes_they_write(src, tmp_path):
    from kohyawan.files.stream import copy_file
    from kohyawan.registry import lorafile

    new = {"ss_steps": "1200", "ss_output_name": "a-name-long-enough-to-move-the-window", "kohyawan.name": "x"}
    same = lorafile.rewrite_metadata(src, tmp_path / "same.safetensors", new)
    assert same.sha256 == hashlib.sha256(same.path.read_bytes()).hexdigest()
    assert same.bytes == same.path.stat().st_size
    # tensors untouched, ss_steps changed: the model hash stays, the legacy one follows the new header
    m = meta(same.path)
    assert m["ss_steps"] == "1200" and m["sshs_model_hash"] == meta(src)["sshs_model_hash"]
    assert (m["sshs_model_hash"], m["sshs_legacy_hash"]) == musubi(same.path)
    assert m["sshs_legacy_hash"] != meta(src)["sshs_legacy_hash"]
    half = lorafile.convert(src, tmp_path / "bf16.safetensors", "bf16", {"kohyawan.name": "x"})
    assert half.sha256 == hashlib.sha256(half.path.read_bytes()).hexdigest()
    assert (meta(half.path)["sshs_model_hash"], meta(half.path)["sshs_legacy_hash"]) == musubi(half.path)
    copied = copy_file(half.path, tmp_path / "copy.safetensors")
    assert copied.sha256 == half.sha256 and copied.path.read_bytes() == half.path.read_bytes()
