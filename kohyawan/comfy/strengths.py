"""Default strengths for stacked LoRAs (the guide's ranges) and LoRA stack parsing.

The guide gives ranges, not points: one LoRA 0.9-1.0, two 0.7-0.9 each, three or more 0.6-0.8 each.
We pick one number per stack size:

* one LoRA -> 1.0: a LoRA is trained (and its checkpoints judged) at full strength, so 1.0 shows what
  training produced; the test grid is where lower strengths are tried.
* two -> 0.8 and three or more -> 0.7: the middle of each range, since stacked updates add up and the
  guide gives no reason to favour either end.

The stack size is counted per expert: a high-noise-only LoRA does not crowd the low-noise stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kohyawan.errors import BadInput

RANGES = {1: (0.9, 1.0), 2: (0.7, 0.9), 3: (0.6, 0.8)}


def default_strength(stack_size: int) -> float:
    """The strength each LoRA gets when ``stack_size`` LoRAs are chained on one expert."""
    if stack_size < 1:
        raise ValueError("stack_size must be at least 1")
    if stack_size == 1:
        return 1.0
    if stack_size == 2:
        return 0.8
    return 0.7


def guide_range(stack_size: int) -> tuple[float, float]:
    return RANGES[min(stack_size, 3)]


@dataclass(frozen=True)
class LoraRef:
    """One LoRA as the user named it. ``expert`` is "both", "high" or "low"; ``strength`` None = default."""

    name: str
    strength: float | None = None
    expert: str = "both"


_STRENGTH = re.compile(r"^(.*):([-+]?(?:\d+\.?\d*|\.\d+))$")


def parse_lora(text: str, expert: str = "both") -> LoraRef:
    """``NAME[:STRENGTH]``. Only a trailing ``:<number>`` is a strength, so names with colons survive."""
    text = text.strip()
    match = _STRENGTH.match(text)
    name, strength = (match.group(1), float(match.group(2))) if match else (text, None)
    if not name:
        raise BadInput(f"LoRA '{text}' has no file name (expected NAME[:STRENGTH])")
    if strength is not None and not -100.0 <= strength <= 100.0:
        # LoraLoaderModelOnly accepts -100..100; anything outside is refused by ComfyUI itself.
        raise BadInput(f"LoRA strength {strength} for '{name}' is outside ComfyUI's range -100..100")
    return LoraRef(name=name, strength=strength, expert=expert)


def expert_of_name(name: str) -> str:
    """Which expert a file is for, judged from its name: registry expert pairs are named
    ``..._high_...`` / ``..._low_...`` (also ``high_noise``/``low_noise``). Anything else is "both"."""
    stem = re.split(r"[\\/]", name)[-1]
    tokens = set(re.split(r"[_\-.\s]+", stem.lower()))
    high = "high" in tokens or "highnoise" in tokens
    low = "low" in tokens or "lownoise" in tokens
    if high and not low:
        return "high"
    if low and not high:
        return "low"
    return "both"


def stacks(refs: list[LoraRef], auto_expert: bool = True) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Split LoRAs onto the two experts and fill in default strengths.

    A LoRA marked "both" whose file name says high or low goes to that expert only (when
    ``auto_expert``); explicit ``--lora-high``/``--lora-low`` always win.
    """
    high: list[LoraRef] = []
    low: list[LoraRef] = []
    for ref in refs:
        expert = ref.expert
        if expert == "both" and auto_expert:
            expert = expert_of_name(ref.name)
        if expert in ("both", "high"):
            high.append(ref)
        if expert in ("both", "low"):
            low.append(ref)
        if expert not in ("both", "high", "low"):
            raise BadInput(f"unknown expert '{expert}' for LoRA '{ref.name}'")

    def fill(stack: list[LoraRef]) -> list[tuple[str, float]]:
        default = default_strength(len(stack)) if stack else 1.0
        return [(r.name, default if r.strength is None else r.strength) for r in stack]

    return fill(high), fill(low)


_REGISTRY_FILE = re.compile(r"^wan2\.2_(character|style|motion|domain)_")


def local_path_warning(name: str) -> str | None:
    """A warning when a LoRA is named by a path on this machine. ComfyUI's ``lora_name`` is the file's name
    under its own ``models/loras/`` folder, so a local path matches nothing there; None for a plain name."""
    path = Path(name).expanduser()
    if not (path.is_absolute() or name.startswith(("~", "./", "../")) or ("/" in name and path.is_file())):
        return None
    parts = path.resolve().parts
    inside = next((i + 2 for i in range(len(parts) - 2) if parts[i:i + 2] == ("models", "loras")), None)
    if inside is not None:
        hint = f"inside a ComfyUI folder it is {'/'.join(parts[inside:])}"
    elif _REGISTRY_FILE.match(path.name):
        from kohyawan.registry.deploy import SUBDIR  # where `registry deploy` puts a version

        kind = _REGISTRY_FILE.match(path.name).group(1)
        hint = f"after `kohyawan registry deploy` ComfyUI lists it as {'/'.join(SUBDIR[2:])}/{kind}/{path.name}"
    else:
        hint = "copy it into ComfyUI's models/loras/ and name it as ComfyUI lists it"
    return (f"--lora {name} is a file path on this machine, but ComfyUI's lora_name is a name under its "
            f"models/loras/ folder ({hint}); the workflow names it as given")
