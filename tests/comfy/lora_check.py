"""Run ComfyUI's own LoRA loading code on LoRA files and print, per case, the keys it would not apply.

Usage (inside a Python that can import the ComfyUI checkout): lora_check.py COMFY_DIR CASES.json
CASES.json is a list of [file, task, dim, ffn_dim, layers, in_dim, out_dim, image_attn]. Output: one
JSON object {file|task: [ignored keys]}. The WAN model is built by ComfyUI's own class on the meta
device, so no weights are needed; "ignored" = logged "lora key not loaded", plus patches whose matrices
cannot be reshaped to the weight (ComfyUI logs ERROR and skips them), plus diff patches of another shape.
"""

import json
import logging
import math
import sys

comfy_dir, cases_file = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_dir)

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.lora  # noqa: E402
import comfy.lora_convert  # noqa: E402
import comfy.ops  # noqa: E402
from comfy.ldm.wan.model import WanModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


class _Config:
    unet_config: dict = {}


class _Model:
    def __init__(self, dim, ffn_dim, layers, in_dim, out_dim, image_attn):
        net = WanModel(model_type="i2v" if image_attn else "t2v", in_dim=in_dim, dim=dim, ffn_dim=ffn_dim,
                       num_heads=dim // 128, num_layers=layers, out_dim=out_dim, device="meta",
                       operations=comfy.ops.disable_weight_init)
        self.sd = {"diffusion_model." + k: v for k, v in net.state_dict().items()}
        self.model_config = _Config()

    def state_dict(self):
        return self.sd


class _Catch(logging.Handler):
    def __init__(self):
        super().__init__()
        self.keys = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("lora key not loaded: "):
            self.keys.append(msg.split(": ", 1)[1])


def ignored(path, model):
    original = load_file(path)
    lora = comfy.lora_convert.convert_lora(dict(original))
    renamed = {id(v): k for k, v in original.items()}  # tensors keep identity through the renaming
    names = {k: renamed.get(id(v), k) for k, v in lora.items()}
    catch = _Catch()
    logging.getLogger().addHandler(catch)
    try:
        patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model, {}))
    finally:
        logging.getLogger().removeHandler(catch)
    out = {names.get(k, k) for k in catch.keys}
    for param, patch in patches.items():
        if isinstance(patch, tuple):
            if tuple(patch[1][0].shape) != tuple(model.sd[param].shape):
                out.add(renamed[id(patch[1][0])])
            continue
        up, down = patch.weights[0], patch.weights[1]
        if up.shape[0] * math.prod(down.shape[1:]) != model.sd[param].numel():
            out |= {names.get(k, k) for k in patch.loaded_keys}
    return sorted(out)


models = {}
result = {}
for path, task, *shape in json.loads(open(cases_file).read()):
    key = tuple(shape)
    if key not in models:
        models[key] = _Model(*shape)
    result[f"{path}|{task}"] = ignored(path, models[key])
print(json.dumps(result))
