"""lora verify against ComfyUI's own loading code (needs a ComfyUI checkout: KOHYAWAN_COMFYUI_DIR).

KOHYAWAN_COMFYUI_PYTHON picks the interpreter that has ComfyUI's requirements (default: this one).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
torch = pytest.importorskip("torch")  # the LoRA tools need torch; the Python 3.10 CI run has none
from safetensors.torch import load_file, save_file

from kohyawan.lora import keys as K
from kohyawan.lora.convert import convert_file
from kohyawan.lora.fabricate import write_lora
from kohyawan.lora.verify import verify_file

COMFY = os.environ.get("KOHYAWAN_COMFYUI_DIR")
# How ComfyUI builds each model, written out here rather than taken from kohyawan.lora.keys, so a wrong
# fact there cannot agree with itself: (dim, ffn_dim, layers, in_dim, out_dim, image cross-attention).
# ComfyUI gives a Wan 2.2 I2V checkpoint (no img_emb) plain t2v cross-attention.
COMFY_MODELS = {
    "t2v-A14B": (5120, 13824, 40, 16, 16, False),
    "i2v-A14B": (5120, 13824, 40, 36, 16, False),
    "i2v-14B": (5120, 13824, 40, 36, 16, True),
    "t2v-1.3B": (1536, 8960, 30, 16, 16, False),
}

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not COMFY, reason="set KOHYAWAN_COMFYUI_DIR to a ComfyUI checkout")]


def test_verify_agrees_with_comfyui_key_for_key(tmp_path):
    files = {
        "t2v": write_lora(tmp_path / "t2v.safetensors", rank=2, blocks=[0, 39]),
        "i2v21": write_lora(tmp_path / "i2v21.safetensors", task="i2v-14B", rank=2, blocks=[0, 39]),
        "small": write_lora(tmp_path / "small.safetensors", task="t2v-1.3B", rank=2, blocks=[0, 29]),
    }
    files["comfy"] = tmp_path / "comfy.safetensors"
    convert_file(files["t2v"], files["comfy"], to="comfy")
    sd = load_file(files["t2v"])
    save_file({k.replace("lora_unet_", "lora_unet__"): v for k, v in sd.items()}, tmp_path / "fun.safetensors")
    save_file({"transformer." + K.module_path(k.split(".")[0]) + "." + k.split(".", 1)[1]: v for k, v in sd.items()},
              tmp_path / "trans.safetensors")
    sd["lora_unet_blocks_0_ffn_0.lora_mystery"] = torch.ones(1)
    sd["lora_unet_blocks_0_ffn_0.diff_b"] = torch.zeros(13824)
    save_file(sd, tmp_path / "odd.safetensors")
    paths = list(files.values()) + [tmp_path / n for n in ("fun.safetensors", "trans.safetensors", "odd.safetensors")]
    cases = []
    for path in paths:
        for task, shape in COMFY_MODELS.items():
            cases.append([str(path), task, *shape])
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    python = os.environ.get("KOHYAWAN_COMFYUI_PYTHON", sys.executable)
    script = Path(__file__).parent / "comfy" / "lora_check.py"
    out = subprocess.run([python, str(script), COMFY, str(tmp_path / "cases.json")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    for path, task, *_ in cases:
        assert sorted(verify_file(Path(path), task).ignored) == theirs[f"{path}|{task}"], (path, task)
