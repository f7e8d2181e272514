"""The GPU and cloud-offer table the estimator prices runs against (``kohyawan/estimate/gpus.toml``).

Users edit a copy at ``$XDG_CONFIG_HOME/kohyawan/gpus.toml``: a GPU there replaces the built-in entry with
the same key. Names match NVML device names, table keys or any unique substring ("4090", "a100-40gb").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from kohyawan.errors import BadInput, ConfigError
from kohyawan.files import toml

BUILTIN = Path(__file__).resolve().parent / "gpus.toml"


@dataclass(frozen=True)
class Offer:
    provider: str
    usd_per_hour: float
    usd_per_hour_max: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Gpu:
    key: str
    vram_gib: float
    bf16_tflops: float
    mfu: float
    h2d_gbps: float
    names: tuple[str, ...] = ()
    offers: tuple[Offer, ...] = ()
    mfu_from: str | None = None     # the entry whose fitted mfu this one is scaled from; None: its own



def user_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kohyawan" / "gpus.toml"


def _parse(path: Path) -> tuple[dict[str, Gpu], str | None]:
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except (OSError, toml.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read GPU table {path}: {exc}") from exc
    gpus = {}
    for key, row in (data.get("gpu") or {}).items():
        try:
            offers = tuple(Offer(provider=str(o["provider"]), usd_per_hour=float(o["usd_per_hour"]),
                                 usd_per_hour_max=(float(o["usd_per_hour_max"]) if "usd_per_hour_max" in o
                                                   else None), source=str(o.get("source", "")))
                           for o in row.get("offers", ()))
            gpus[key] = Gpu(key=key, vram_gib=float(row["vram_gib"]), bf16_tflops=float(row["bf16_tflops"]),
                            mfu=float(row["mfu"]) if "mfu" in row else -1.0, h2d_gbps=float(row.get("h2d_gbps", 24)),
                            names=tuple(str(n) for n in row.get("names", ())), offers=offers)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"GPU table {path}: entry [gpu.{key}] is incomplete or malformed ({exc})") from exc
    return gpus, data.get("mfu_from")


def load_gpus(extra: Path | None = None) -> dict[str, Gpu]:
    """Built-in table, then the user's file (if any), then ``extra`` (tests, --gpus FILE). An entry without
    its own mfu takes the one of the entry named by ``mfu_from`` (the GPU the throughput was fitted on)."""
    gpus, mfu_from = _parse(BUILTIN)
    for path in (user_file(), extra):
        if path is not None and path.is_file():
            more, named = _parse(path)
            gpus.update(more)
            mfu_from = named or mfu_from
    source = gpus.get(mfu_from) if mfu_from else None
    fitted = source.mfu if source is not None and source.mfu > 0 else None
    for key, gpu in gpus.items():
        if gpu.mfu <= 0:
            if fitted is None:
                raise ConfigError(f"GPU table: [gpu.{key}] has no mfu, and mfu_from = {mfu_from!r} names no entry "
                                  "with one to scale from")
            gpus[key] = replace(gpu, mfu=fitted, mfu_from=mfu_from)
    return gpus


def find_gpu(name: str, gpus: dict[str, Gpu] | None = None) -> Gpu:
    gpus = load_gpus() if gpus is None else gpus
    wanted = name.strip().lower()
    for gpu in gpus.values():
        if wanted == gpu.key.lower() or wanted in (n.lower() for n in gpu.names):
            return gpu
    matches = [g for g in gpus.values()
               if wanted in g.key.lower() or any(wanted in n.lower() for n in g.names)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(gpus))
    if not matches:
        raise BadInput(f"unknown GPU '{name}'; known: {known} (add it to {user_file()}, or give --vram GB)")
    raise BadInput(f"GPU '{name}' is ambiguous: {', '.join(g.key for g in matches)}")
