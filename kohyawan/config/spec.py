"""The frozen description of one run, and validation of every value that goes into it.

A ``RunSpec`` is what profiles resolve to and what rendering, estimating and running consume. Values are
kept under musubi-tuner's own names: ``train`` holds wan_train_network.py options by dest name, ``dataset``
holds dataset-config keys, ``extra`` holds kohyawan's own profile sections (ladder, watchdog, prepare, ...).
``origin`` says where each value came from, keyed ``"train.<name>"`` / ``"dataset.<name>"`` /
``"<section>.<name>"``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from kohyawan.errors import ConfigError
from kohyawan.trainer import musubi

TASKS = musubi.TASKS
EXPERT_MODES = ("both", "high", "low", "sequential")

# kohyawan's own profile sections and the keys each accepts.
EXTRA_SECTIONS: dict[str, dict[str, type | tuple]] = {
    "ladder": {"vram": list, "ram": list, "max_attempts": int},
    "watchdog": {"stall_minutes": (int, float), "stall_factor": (int, float),
                 "cache_stall_minutes": (int, float), "loss_spike_factor": (int, float),
                 "loss_spike_window": int, "loss_spike_patience": int, "low_util_percent": (int, float),
                 "low_util_minutes": (int, float), "vram_margin_gb": (int, float), "ram_margin_gb": (int, float),
                 "sample_seconds": (int, float)},
    "prepare": {},  # dataset-prep thresholds; validated by the dataset module that reads them
    "profile": {"description": str, "use_case": str, "min_images": int, "min_clips": int,
                "recommended_clips": int},
}

# Options kohyawan sets itself; a --set for them would be silently overwritten, so refuse it.
MANAGED_TRAIN_OPTIONS = {
    "config_file": "kohyawan writes the training TOML itself",
    "dataset_config": "kohyawan writes dataset.toml itself",
    "output_dir": "outputs go to the run folder (use --out / --runs-dir)",
    "task": "use --task",
    "dit": "use --dit", "dit_high_noise": "use --dit-high-noise", "vae": "use --vae", "t5": "use --t5",
    "resume": "kohyawan resumes runs itself (kohyawan runs resume)",
}


@dataclass(frozen=True)
class Models:
    dit: Path | None = None
    dit_high_noise: Path | None = None
    vae: Path | None = None
    t5: Path | None = None

    def absolute(self) -> "Models":
        return Models(**{k: (Path(os.path.abspath(v)) if v is not None else None) for k, v in self.__dict__.items()})

    def as_dict(self) -> dict[str, str | None]:
        return {k: (str(v) if v is not None else None) for k, v in self.__dict__.items()}


def _freeze(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class RunSpec:
    profile: str
    variant: str | None
    task: str
    expert: str
    dataset_dir: Path | None
    models: Models
    train: Mapping[str, Any]
    dataset: Mapping[str, Any]
    extra: Mapping[str, Any]
    origin: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()   # warnings and explanations gathered while resolving

    def value(self, key: str, default: Any = None) -> Any:
        """Look up ``train.X`` / ``dataset.X`` / ``section.X`` (or a bare trainer/dataset name)."""
        section, name = split_key(key)
        if section == "train":
            return self.train.get(name, default)
        if section == "dataset":
            return self.dataset.get(name, default)
        return self.extra.get(section, {}).get(name, default)

    def with_changes(self, changes: Mapping[str, Any], source: str) -> "RunSpec":
        """A new spec with ``changes`` (keys as for ``--set``) applied and validated."""
        layers = Layers.from_spec(self)
        for key, value in changes.items():
            layers.set(key, value, source)
        return replace(self, train=_freeze(layers.train), dataset=_freeze(layers.dataset),
                       extra=_freeze(layers.extra), origin=_freeze(layers.origin))


def _all_names() -> list[str]:
    names = list(musubi.options()) + list(musubi.DATASET_KEYS)
    names += [f"{s}.{k}" for s, keys in EXTRA_SECTIONS.items() for k in keys]
    return names


def split_key(key: str) -> tuple[str, str]:
    """Map a user key to (section, name); unknown keys fail with a suggestion."""
    if "." in key:
        section, name = key.split(".", 1)
        if section == "train" and name in musubi.options():
            return section, name
        if section == "dataset" and name in musubi.DATASET_KEYS:
            return section, name
        if section in EXTRA_SECTIONS and (name in EXTRA_SECTIONS[section] or not EXTRA_SECTIONS[section]):
            return section, name
    elif key in musubi.options():
        return "train", key
    elif key in musubi.DATASET_KEYS:
        return "dataset", key
    if key.split(".", 1)[-1] in musubi.DATASET_PATH_KEYS:
        raise ConfigError(f"'{key}' is set by kohyawan from --dataset and the output folder")
    close = difflib.get_close_matches(key.split(".", 1)[-1] if key.startswith(("train.", "dataset."))
                                      else key, _all_names(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else " (not a musubi-tuner option, dataset key or kohyawan setting)"
    raise ConfigError(f"unknown key '{key}'{hint}")


def check_extra(section: str, name: str, value: Any) -> Any:
    expected = EXTRA_SECTIONS[section].get(name)
    if expected is not None and (isinstance(value, bool) and expected is not bool
                                 or not isinstance(value, expected)):
        kinds = expected if isinstance(expected, tuple) else (expected,)
        raise ConfigError(f"'{section}.{name}' must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


@dataclass
class Layers:
    """Mutable accumulator used while resolving; frozen into a RunSpec at the end."""

    train: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "Layers":
        return cls(dict(spec.train), dict(spec.dataset), {k: dict(v) for k, v in spec.extra.items()},
                   dict(spec.origin))

    def set(self, key: str, value: Any, source: str) -> None:
        section, name = split_key(key)
        if section == "train":
            if name in MANAGED_TRAIN_OPTIONS:
                raise ConfigError(f"'{name}' cannot be set: {MANAGED_TRAIN_OPTIONS[name]}")
            self.train[name] = musubi.check_train_value(name, value)
        elif section == "dataset":
            self.dataset[name] = musubi.check_dataset_value(name, value)
        else:
            self.extra.setdefault(section, {})[name] = check_extra(section, name, value)
        self.origin[f"{section}.{name}"] = source

    def merge_table(self, table: Mapping[str, Any], source: str, *, where: str) -> None:
        """Apply a profile-shaped table: [train], [dataset] and kohyawan's own sections."""
        for section, body in table.items():
            if section in ("train", "dataset") or section in EXTRA_SECTIONS:
                if not isinstance(body, Mapping):
                    raise ConfigError(f"{where}: [{section}] must be a table")
                for name, value in body.items():
                    self.set(f"{section}.{name}", value, source)
            elif section in ("extends", "task", "variants"):
                continue  # structural keys handled by the profile loader
            else:
                close = difflib.get_close_matches(section, ["train", "dataset", *EXTRA_SECTIONS], n=1)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                raise ConfigError(f"{where}: unknown section [{section}]{hint}")
