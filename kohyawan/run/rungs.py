"""The fallback ladder as data: named rungs and what each changes in a RunSpec (pure).

A profile lists rung names under ``[ladder] vram`` (out of GPU memory) and ``[ladder] ram`` (out of host
memory), cheapest in quality and speed first. Rungs are cumulative: rung k keeps every change of the rungs
before it. A rung that changes nothing for the spec at hand (block swap already deeper, checkpointing
already on) is left out, so every rung in the list is a real change.

``fewer_blocks_to_swap`` expands into steps down the block-swap grid, ``fewer_blocks_to_swap=N`` each, from
below the swap in effect to 0 (39 -> 30, 20, 10, 0). The host-RAM ladder is built from the settings in
effect when the trainer runs out of host RAM (``ram_rungs(spec with the rungs taken so far)``), since the
VRAM rungs are what usually turned block swap on; ``kohyawan.run.hostram`` keeps the steps that help.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kohyawan.errors import ConfigError
from kohyawan.config.spec import RunSpec
from kohyawan.trainer import musubi


@dataclass(frozen=True)
class Rung:
    name: str
    changes: Mapping[str, Any]   # "train.X" / "dataset.X" -> absolute new value
    needs_recache: bool          # resolution or frames changed: latent caches must be rebuilt
    keeps_state: bool            # False when a saved optimizer state cannot be loaded (rank change)

    def describe(self) -> str:
        return ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in self.changes.items())


def _frames_down(frames: list[int]) -> list[int]:
    return sorted({max(5, ((f - 1) // 2) // 4 * 4 + 1) for f in frames})


def _res_down(res: list[int]) -> list[int]:
    return [max(256, int(v * 0.75) // 16 * 16) for v in res]


def _fp8_scaled_allowed(spec: RunSpec) -> bool:
    """fp8_scaled needs a bf16/fp16 checkpoint; a plain fp8 checkpoint only takes fp8_base."""
    if spec.models.dit is None:
        return True
    try:
        from kohyawan.modelfiles.identify import identify
        return identify(spec.models.dit).dtype not in ("fp8_e4m3fn", "fp8_e5m2")
    except Exception:  # no model inspection available or unreadable: the preflight reports it
        return True


Changes = tuple[dict[str, Any], bool, bool]   # (changes, needs_recache, keeps_state)


def _gradient_checkpointing(spec: RunSpec) -> Changes:
    return {"train.gradient_checkpointing": True}, False, True


def _fp8_base(spec: RunSpec) -> Changes:
    changes = {"train.fp8_base": True}
    if _fp8_scaled_allowed(spec):
        changes["train.fp8_scaled"] = True
    return changes, False, True


def _blocks_to_swap(spec: RunSpec, raw: str) -> Changes:
    top = musubi.max_blocks_to_swap(spec.task)
    n = top if raw == "max" else int(raw)
    if (spec.train.get("blocks_to_swap") or 0) >= min(n, top):
        return {}, False, True  # already swapping at least this deep: a rung never lowers the swap
    changes = {"train.blocks_to_swap": min(n, top)}
    if spec.train.get("offload_inactive_dit"):
        changes["train.offload_inactive_dit"] = False  # the trainer refuses both together
    return changes, False, True


def _gradient_checkpointing_cpu_offload(spec: RunSpec) -> Changes:
    return {"train.gradient_checkpointing": True, "train.gradient_checkpointing_cpu_offload": True}, False, True


def _split_attn(spec: RunSpec) -> Changes:
    return {"train.split_attn": True}, False, True


def _fewer_frames(spec: RunSpec) -> Changes:
    d = spec.dataset
    if d.get("frame_extraction") == "full":
        return {"dataset.max_frames": _frames_down([d.get("max_frames", 129)])[0]}, True, True
    return {"dataset.target_frames": _frames_down(list(d.get("target_frames", [17])))}, True, True


def _lower_resolution(spec: RunSpec) -> Changes:
    return {"dataset.resolution": _res_down(list(spec.dataset.get("resolution", [512, 512])))}, True, True


def _lower_rank(spec: RunSpec) -> Changes:
    t = spec.train
    dim = t.get("network_dim", 32)
    new = max(8, dim // 2)
    changes = {"train.network_dim": new}
    if "network_alpha" in t:
        changes["train.network_alpha"] = float(t["network_alpha"]) * new / dim
    return changes, False, False


def _no_pinned_memory(spec: RunSpec) -> Changes:
    return {"train.use_pinned_memory_for_block_swap": False}, False, True


def _fewer_workers(spec: RunSpec) -> Changes:
    n = spec.train.get("max_data_loader_n_workers", 8) // 2
    changes = {"train.max_data_loader_n_workers": n}
    if n == 0:
        changes["train.persistent_data_loader_workers"] = False
    return changes, False, True


SWAP_STEP = 10   # the block-swap grid the ladders walk (the VRAM ladder's blocks_to_swap=10/20/30 rungs)


def swap_steps(spec: RunSpec) -> list[str]:
    """``fewer_blocks_to_swap=N`` for every grid point below the swap in effect, deepest first."""
    now = min(int(effective(spec, "train.blocks_to_swap") or 0), musubi.max_blocks_to_swap(spec.task))
    return [f"fewer_blocks_to_swap={n}" for n in range((now - 1) // SWAP_STEP * SWAP_STEP, -1, -SWAP_STEP)] if now else []


def _fewer_blocks_to_swap(spec: RunSpec, raw: str) -> Changes:
    n = int(raw)
    if (spec.train.get("blocks_to_swap") or 0) <= n:
        return {}, False, True  # a host-RAM step never raises the swap
    return {"train.blocks_to_swap": n}, False, True


_RUNGS = {"gradient_checkpointing": _gradient_checkpointing, "fp8_base": _fp8_base,
          "gradient_checkpointing_cpu_offload": _gradient_checkpointing_cpu_offload, "split_attn": _split_attn,
          "fewer_frames": _fewer_frames, "lower_resolution": _lower_resolution, "lower_rank": _lower_rank,
          "no_pinned_memory": _no_pinned_memory, "fewer_workers": _fewer_workers}


def _changes_for(name: str, spec: RunSpec) -> Changes:
    if name.startswith("blocks_to_swap="):
        return _blocks_to_swap(spec, name.split("=", 1)[1])
    if name.startswith("fewer_blocks_to_swap="):
        return _fewer_blocks_to_swap(spec, name.split("=", 1)[1])
    if name in _RUNGS:
        return _RUNGS[name](spec)
    raise ConfigError(f"unknown ladder rung '{name}'; known: {', '.join(KNOWN_RUNGS)}")


KNOWN_RUNGS = ("gradient_checkpointing", "fp8_base", "blocks_to_swap=N", "blocks_to_swap=max",
               "gradient_checkpointing_cpu_offload", "split_attn", "fewer_frames", "lower_resolution",
               "lower_rank", "no_pinned_memory", "fewer_workers", "fewer_blocks_to_swap",
               "fewer_blocks_to_swap=N")


def effective(spec: RunSpec, key: str) -> Any:
    """A value as the trainer will see it: the spec's, else the trainer's default (unset flags are off)."""
    value = spec.value(key)
    if value is None and key.startswith("train."):
        opt = musubi.options()[key.split(".", 1)[1]]
        value = opt.default if opt.default is not None else (0 if key == "train.blocks_to_swap" else None)
    return value


def _build(spec: RunSpec, names: Sequence[str], label: str) -> list[Rung]:
    rungs, current = [], spec
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if name == "fewer_blocks_to_swap":  # the whole way down, from the swap in effect here
            pending[:0] = swap_steps(current)
            continue
        changes, recache, keeps = _changes_for(name, current)
        real = {k: v for k, v in changes.items() if effective(current, k) != v}
        if not real:
            continue
        rung = Rung(name, real, recache, keeps)
        current = current.with_changes(real, f"{label}:{name}")
        rungs.append(rung)
    return rungs


def vram_rungs(spec: RunSpec) -> list[Rung]:
    return _build(spec, spec.extra.get("ladder", {}).get("vram", []), "ladder")


def ram_rungs(spec: RunSpec) -> list[Rung]:
    return _build(spec, spec.extra.get("ladder", {}).get("ram", []), "ladder")


JOIN = "+"   # a step made of several rungs taken in one attempt ("fp8_base+fewer_blocks_to_swap=0")


def combined(rungs: Sequence[Rung]) -> Rung:
    """Several rungs as one step of one attempt: their changes in order, named ``a+b``."""
    changes: dict[str, Any] = {}
    for rung in rungs:
        changes.update(rung.changes)
    return Rung(JOIN.join(r.name for r in rungs), changes, any(r.needs_recache for r in rungs),
                all(r.keeps_state for r in rungs))


def named(name: str, spec: RunSpec) -> Rung | None:
    """The rung ``name`` as it applies to ``spec`` (a name run.json recorded), or None when it changes nothing."""
    if JOIN in name:
        parts, current = [], spec
        for part in name.split(JOIN):
            rung = named(part, current)
            if rung is not None:
                parts.append(rung)
                current = apply(current, [rung])
        return combined(parts) if parts else None
    if name.split("=", 1)[0] not in {n.split("=", 1)[0] for n in KNOWN_RUNGS} or name == "fewer_blocks_to_swap":
        return None
    built = _build(spec, [name], "ladder")
    return built[0] if built else None


def apply(spec: RunSpec, rungs: Sequence[Rung]) -> RunSpec:
    for rung in rungs:
        spec = spec.with_changes(rung.changes, f"ladder:{rung.name}")
    return spec


def validate_names(names: Sequence[str], where: str) -> None:
    for name in names:
        base = name.split("=", 1)[0] + ("=N" if "=" in name else "")
        if name.startswith(("blocks_to_swap=", "fewer_blocks_to_swap=")):
            raw, takes_max = name.split("=", 1)[1], name.startswith("blocks_to_swap=")
            if not raw.isdigit() and not (takes_max and raw == "max"):
                raise ConfigError(f"{where}: ladder rung '{name}' needs a number" + (" or max" if takes_max else ""))
            continue
        if base not in KNOWN_RUNGS:
            raise ConfigError(f"{where}: unknown ladder rung '{name}'; known: {', '.join(KNOWN_RUNGS)}")
