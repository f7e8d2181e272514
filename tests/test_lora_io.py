"""The streamed safetensors writer against the safetensors library, and header reading of bad files."""

import hashlib
import json
import struct

import pytest
torch = pytest.importorskip("torch")  # the LoRA tools need torch; the Python 3.10 CI run has none
from safetensors.torch import load_file, save

from kohyawan.files.atomic import current_umask as _umask
from kohyawan.files.safetensors import OutSpec
from kohyawan.files.stream import write_stream
from kohyawan.lora.io import LoraFileError, read_header
from kohyawan.lora.tensors import to_buffer as to_bytes


def _specs_and_tensors():
    tensors = {
        "b.lora_up.weight": torch.randn(300, 4).to(torch.bfloat16),
        "a.lora_down.weight": torch.randn(4, 300).to(torch.float16),
        "a.alpha": torch.tensor(2.0, dtype=torch.bfloat16),
        "c.weight": torch.randn(700, 520),  # fp32, big enough that musubi's legacy window (1 MiB) is data
        "d": torch.arange(5, dtype=torch.int64),
    }
    code = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}
    specs = [OutSpec(k, code[v.dtype], tuple(v.shape)) for k, v in tensors.items()]
    return specs, tensors


def _musubi_hashes(tensors, metadata):
    """musubi-tuner's precalculate_safetensors_hashes, restated: serialise with only ss_* metadata."""
    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    (n,) = struct.unpack("<Q", blob[:8])
    model = hashlib.sha256(blob[8 + n:]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
    return model, legacy


def test_stream_writer_matches_the_library_byte_for_byte(tmp_path):
    specs, tensors = _specs_and_tensors()
    meta = {"ss_network_dim": "4"}
    out = tmp_path / "x.safetensors"
    write_stream(out, specs, meta, lambda s: to_bytes(tensors[s.name], s.dtype), musubi_hashes=False)
    assert out.read_bytes() == save(tensors, meta)
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    loaded = load_file(out)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_musubi_hashes_are_recomputed_like_musubi(tmp_path):
    specs, tensors = _specs_and_tensors()
    meta = {"ss_network_dim": "4", "ss_datasets": json.dumps([{"x": "é\n"}]), "kohyawan.notes": "anything"}
    out = tmp_path / "x.safetensors"
    write_stream(out, specs, meta, lambda s: to_bytes(tensors[s.name], s.dtype))
    header = read_header(out)
    model, legacy = _musubi_hashes(tensors, meta)
    assert header.metadata["sshs_model_hash"] == model
    assert header.metadata["sshs_legacy_hash"] == legacy
    assert header.metadata["ss_datasets"] == meta["ss_datasets"]


def test_failed_write_leaves_nothing(tmp_path):
    specs, tensors = _specs_and_tensors()

    def produce(spec):
        if spec.name == "d":
            raise RuntimeError("boom")
        return to_bytes(tensors[spec.name], spec.dtype)

    with pytest.raises(RuntimeError):
        write_stream(tmp_path / "x.safetensors", specs, {}, produce)
    assert list(tmp_path.iterdir()) == []


def test_bad_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes(save({"w": torch.zeros(64, 64)}))
    cases = {
        "truncated.safetensors": good.read_bytes()[:-100],
        "short.safetensors": b"abc",
        "text.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
        "hugeheader.safetensors": struct.pack("<Q", 10**12) + b"{}",
    }
    expected = {
        "truncated.safetensors": "truncated: tensors need 16384 bytes of data, file has 16284",
        "short.safetensors": "not a safetensors file (3 bytes, too short for a header)",
        "text.safetensors": "not a safetensors file (header is not JSON)",
        "hugeheader.safetensors": "not a safetensors file (header length 1000000000000 is impossible)",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LoraFileError) as info:
            read_header(tmp_path / name)
        assert str(info.value) == f"{name}: {expected[name]}"
    with pytest.raises(LoraFileError, match="no such file"):
        read_header(tmp_path / "missing.safetensors")
