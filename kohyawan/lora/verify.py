"""Would ComfyUI load every key of this LoRA onto the model of a given task? (header only, no torch)

The check replays ComfyUI's loader on the header: its one renaming rule, its key map for the WAN model
of ``task`` (see ``keys``), which suffixes it consumes for a target, and the shape its patch needs. Every
key that ComfyUI would drop, silently or with a log line, is listed with the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from kohyawan.errors import BadInput
from kohyawan.lora import keys as K
from kohyawan.files.safetensors import Header
from kohyawan.lora.io import LoraFileError, read_header


@dataclass
class VerifyReport:
    path: str
    task: str
    ok: bool
    loaded: int                      # tensor keys ComfyUI would load and apply
    modules: int                     # targets patched
    ignored: list[str]               # keys ComfyUI would not load or not apply
    problems: list[str]              # one line per kind of problem
    reasons: dict[str, str] = field(default_factory=dict)   # ignored key -> reason code

    def to_dict(self) -> dict:
        return {"path": self.path, "task": self.task, "ok": self.ok, "loaded": self.loaded,
                "modules": self.modules, "ignored": self.ignored, "problems": self.problems,
                "reasons": self.reasons}


def check_task(task: str) -> str:
    if task not in K.TASK_MODELS:
        raise BadInput(f"unknown task {task!r}; known: {', '.join(K.TASKS)}")
    return task


def verify_file(path: Path, task: str) -> VerifyReport:
    check_task(task)
    header = read_header(Path(path))
    require_lora(header)
    return verify_header(header, task)


def require_lora(header: Header) -> None:
    groups = K.group_targets(list(header.tensors))
    if not any(K.lora_pair(s) or any(x in s for x in K.OTHER_ADAPTER_SUFFIXES + K.DIFF_SUFFIXES)
               for s in groups.values()):
        raise LoraFileError(f"{header.path.name}: not a LoRA: none of its {len(header.tensors)} tensors is a "
                            "lora_down/lora_up (or lora_A/lora_B) pair")


_BLOCK = re.compile(r"blocks[._](\d+)[._]")


def _why_unmapped(target: str, task: str) -> str:
    """Reason code for a target that is not in ComfyUI's key map of this model."""
    family = K.family_of(target)
    if family not in K.LOADED_FAMILIES:
        return f"family:{family}"
    path = K.module_path(target)
    tm = K.TASK_MODELS[task]
    if path is None:
        return "unknown_module"
    m = _BLOCK.match(path)
    if m and int(m.group(1)) >= K.SIZES[tm.size].layers:
        return "block_index"
    if path.endswith(("k_img", "v_img")) or path.startswith("img_emb"):
        return "image_attn"
    return "unknown_module"


def verify_header(header: Header, task: str) -> VerifyReport:
    tm = K.TASK_MODELS[task]
    size = K.SIZES[tm.size]
    renamed = K.comfy_prepare(list(header.tensors))
    back = {v: k for k, v in renamed.items()}
    key_map = K.comfy_key_map(task)
    params = K.model_params(task)
    reasons: dict[str, str] = {}
    loaded = modules = 0
    shape_examples: list[str] = []
    for target, suffixes in K.group_targets(list(renamed.values())).items():
        originals = {s: back[k] for s, k in suffixes.items()}
        if target not in key_map:
            why = _why_unmapped(target, task)
            for key in originals.values():
                reasons[key] = why
            continue
        weight_name = key_map[target]
        wshape = params[weight_name]
        consumed: set[str] = set()
        applied = False
        pair = K.lora_pair(suffixes)
        if pair:
            up, down = (header.tensors[back[k]].shape for k in pair)
            ok = (len(up) >= 2 and len(down) >= 2 and up[1] == down[0] and up[0] == wshape[0]
                  and math.prod(down[1:]) == math.prod(wshape[1:]))
            up_suffix = next(s for s in K.LORA_PAIRS if suffixes.get(s) == pair[0])
            consumed |= {up_suffix, K.LORA_PAIRS[up_suffix], "alpha", "dora_scale", "lora_mid.weight", "reshape_weight"}
            if not ok:  # ComfyUI logs ERROR and skips the patch; the target's other keys still count
                for s in consumed & set(originals):
                    reasons[originals[s]] = "shape"
                if len(shape_examples) < 1:
                    shape_examples.append(f"{target}: up {list(up)} x down {list(down)} vs weight {list(wshape)}")
            else:
                applied = True
        for s in ("diff", "set_weight", "w_norm"):
            if s in suffixes:
                consumed.add(s)
                if header.tensors[originals[s]].shape != wshape:
                    reasons[originals[s]] = "shape"
                else:
                    applied = True
        for s in ("diff_b", "b_norm"):
            if s in suffixes:
                consumed.add(s)
                bias = params.get(weight_name[: -len(".weight")] + ".bias") if weight_name.endswith(".weight") else None
                if bias is None or header.tensors[originals[s]].shape != bias:
                    reasons[originals[s]] = "shape"
                else:
                    applied = True
        lyco = [s for s in suffixes if s in K.OTHER_ADAPTER_SUFFIXES]
        if lyco and not pair:
            consumed |= set(lyco) | {"alpha", "dora_scale"}
            applied = True  # LoHa/LoKr: loaded by ComfyUI; kohyawan does not check their shapes
        for s, key in originals.items():
            if key in reasons:
                continue
            if s not in consumed:
                reasons[key] = "suffix"
            else:
                loaded += 1
        modules += 1 if applied else 0
    ignored = sorted(reasons, key=_natural)
    problems = _problems(reasons, task, size, shape_examples)
    if loaded == 0 and not problems:
        problems.append("no key would be loaded")
    return VerifyReport(str(header.path), task, not ignored and loaded > 0, loaded, modules, ignored, problems, reasons)


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _problems(reasons: dict[str, str], task: str, size: K.ModelSize, shape_examples: list[str]) -> list[str]:
    by_code: dict[str, list[str]] = {}
    for key, code in reasons.items():
        by_code.setdefault(code, []).append(key)
    lines = []
    tm = K.TASK_MODELS[task]
    model = f"the Wan {tm.version} {tm.size} model of {task}"
    for code in sorted(by_code):
        n = len(by_code[code])
        if code.startswith("family:"):
            fam = code.split(":", 1)[1]
            lines.append(f"{n} keys use {fam!r} names, which ComfyUI does not load for WAN "
                         "(only lora_unet_* and diffusion_model.*); 'kohyawan lora convert --to musubi' renames them")
        elif code == "image_attn":
            lines.append(f"{n} keys are Wan 2.1 image cross-attention (k_img/v_img), which {model} does not have: "
                         "ComfyUI drops them silently; this LoRA was trained for a Wan 2.1 I2V model")
        elif code == "block_index":
            lines.append(f"{n} keys name blocks beyond the {size.layers} blocks of {model}")
        elif code == "shape":
            lines.append(f"{n} keys do not fit the weights of {model} (ComfyUI logs ERROR and skips them; "
                         f"e.g. {shape_examples[0] if shape_examples else 'see --json'}): LoRA for another model size")
        elif code == "suffix":
            lines.append(f"{n} keys have a suffix ComfyUI does not read")
        else:
            lines.append(f"{n} keys name modules that {model} does not have")
    return lines
