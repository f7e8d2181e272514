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


@dataclass
class _Tally:
    reasons: dict[str, str] = field(default_factory=dict)   # ignored key -> reason code
    loaded: int = 0
    modules: int = 0
    shape_examples: list[str] = field(default_factory=list)


def verify_header(header: Header, task: str) -> VerifyReport:
    renamed = K.comfy_prepare(list(header.tensors))
    back = {v: k for k, v in renamed.items()}
    key_map = K.comfy_key_map(task)
    tally = _Tally()
    for target, suffixes in K.group_targets(list(renamed.values())).items():
        originals = {s: back[k] for s, k in suffixes.items()}
        if target in key_map:
            _check_target(header, task, target, key_map[target], originals, tally)
        else:
            why = _why_unmapped(target, task)
            tally.reasons.update((key, why) for key in originals.values())
    ignored = sorted(tally.reasons, key=_natural)
    problems = _problems(tally.reasons, task, K.SIZES[K.TASK_MODELS[task].size], tally.shape_examples)
    if tally.loaded == 0 and not problems:
        problems.append("no key would be loaded")
    return VerifyReport(str(header.path), task, not ignored and tally.loaded > 0, tally.loaded, tally.modules,
                        ignored, problems, tally.reasons)


def _check_target(header: Header, task: str, target: str, weight_name: str, originals: dict[str, str],
                  tally: _Tally) -> None:
    """One target ComfyUI maps onto ``weight_name``: which of its keys it loads, and which it drops."""
    shapes = {s: header.tensors[k].shape for s, k in originals.items()}
    params = K.model_params(task)
    wshape = params[weight_name]
    bias = params.get(weight_name[: -len(".weight")] + ".bias") if weight_name.endswith(".weight") else None
    pair_used, pair_bad, pair_ok = _pair_check(target, shapes, wshape, tally)
    weight_used, weight_bad, weight_ok = _weight_checks(shapes, wshape, bias)
    consumed, applied = pair_used | weight_used, pair_ok or weight_ok
    lyco = {s for s in shapes if s in K.OTHER_ADAPTER_SUFFIXES}
    if lyco and not pair_used:  # LoHa/LoKr: loaded by ComfyUI; kohyawan does not check their shapes
        consumed |= lyco | {"alpha", "dora_scale"}
        applied = True
    for s in (pair_bad | weight_bad) & set(originals):
        tally.reasons[originals[s]] = "shape"
    for s, key in originals.items():
        if key in tally.reasons:
            continue
        if s not in consumed:
            tally.reasons[key] = "suffix"
        else:
            tally.loaded += 1
    tally.modules += 1 if applied else 0


def _pair_check(target: str, shapes: dict[str, tuple], wshape: tuple, tally: _Tally) -> tuple[set[str], set[str], bool]:
    """(suffixes a LoRA pair makes ComfyUI read, those dropped for their shape, whether the patch applies)."""
    up_suffix = next((u for u, d in K.LORA_PAIRS.items() if u in shapes and d in shapes), None)
    if up_suffix is None:
        return set(), set(), False
    up, down = shapes[up_suffix], shapes[K.LORA_PAIRS[up_suffix]]
    ok = (len(up) >= 2 and len(down) >= 2 and up[1] == down[0] and up[0] == wshape[0]
          and math.prod(down[1:]) == math.prod(wshape[1:]))
    consumed = {up_suffix, K.LORA_PAIRS[up_suffix], "alpha", "dora_scale", "lora_mid.weight", "reshape_weight"}
    if ok:
        return consumed, set(), True
    # ComfyUI logs ERROR and skips the patch; the target's other keys still count
    if not tally.shape_examples:
        tally.shape_examples.append(f"{target}: up {list(up)} x down {list(down)} vs weight {list(wshape)}")
    return consumed, consumed, False


def _weight_checks(shapes: dict[str, tuple], wshape: tuple, bias: tuple | None) -> tuple[set[str], set[str], bool]:
    """Full-weight and bias patches (diff, set_weight, norms): (read, dropped for their shape, applied)."""
    consumed, bad, applied = set(), set(), False
    for suffix, want in (("diff", wshape), ("set_weight", wshape), ("w_norm", wshape), ("diff_b", bias),
                         ("b_norm", bias)):
        if suffix in shapes:
            consumed.add(suffix)
            if want is None or shapes[suffix] != want:
                bad.add(suffix)
            else:
                applied = True
    return consumed, bad, applied


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
