"""What kohyawan knows about musubi-tuner's WAN scripts: option tables, dataset schema, launch lines.

The option tables in ``options/*.json`` are read from musubi-tuner's own argument parsers (0.3.4); keep every
musubi-specific fact in this module and those files so a trainer update is one diff. The WAN models behind
the tasks (sizes, blocks, experts, boundaries) are ``kohyawan.wan``'s. Design: docs/architecture.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from kohyawan import wan
from kohyawan.errors import ConfigError

TRAIN_SCRIPT = "wan_train_network.py"
CACHE_LATENTS_SCRIPT = "wan_cache_latents.py"
CACHE_TE_SCRIPT = "wan_cache_text_encoder_outputs.py"
SCRIPTS = (CACHE_LATENTS_SCRIPT, CACHE_TE_SCRIPT, TRAIN_SCRIPT)

# musubi --task values (WAN), in musubi's order; the model each one trains is kohyawan.wan.TASKS.
TASKS = tuple(wan.TASKS)
DUAL_EXPERT_TASKS = tuple(task for task, model in wan.TASKS.items() if model.dual)
# Recommended expert split per two-expert task: the boundary timestep, of 1000.
TIMESTEP_BOUNDARY = {task: model.boundary for task, model in wan.TASKS.items() if model.boundary is not None}
ATTENTION_FLAGS = ("sdpa", "xformers", "flash_attn", "flash3")
INFERENCE_ONLY_ATTENTION = ("sage_attn",)


def task_size(task: str) -> str:
    return wan.TASKS[task].size


def max_swap(dit: wan.Dit) -> int:
    """musubi's offloader exchanges a GPU block with a CPU block in place, so one block always stays."""
    return dit.layers - 1


def max_blocks_to_swap(task: str) -> int:
    return max_swap(wan.TASKS[task].dit)


@dataclass(frozen=True)
class Option:
    option: str       # "--learning_rate"
    dest: str         # "learning_rate"
    type: str | None  # "int" | "float" | "str" | "Path" | "_int_or_float" | None (flags, choices)
    default: Any
    choices: tuple | None
    nargs: Any        # None, 0 (flag) or "*"
    action: str       # "store" | "store_true"
    group: str

    @property
    def is_flag(self) -> bool:
        return self.action == "store_true"

    @property
    def is_list(self) -> bool:
        return self.nargs == "*"


@lru_cache(maxsize=None)
def options(script: str = TRAIN_SCRIPT) -> dict[str, Option]:
    data = json.loads((Path(__file__).parent / "options" / script.replace(".py", ".json")).read_text())
    table = {}
    for row in data["options"]:
        choices = tuple(row["choices"]) if row["choices"] else None
        table[row["dest"]] = Option(row["option"], row["dest"], row["type"], row["default"], choices,
                                    row["nargs"], row["action"], row["group"])
    return table


# musubi-tuner's dataset config schema (dataset/config_utils.py): which keys exist where, with their types.
# "res" is an int or an [int, int] pair.
DATASET_GENERAL_KEYS = {"caption_extension": str, "batch_size": int, "num_repeats": int, "resolution": "res",
                        "enable_bucket": bool, "bucket_no_upscale": bool}
IMAGE_DATASET_KEYS = {**DATASET_GENERAL_KEYS, "image_directory": str, "image_jsonl_file": str,
                      "cache_directory": str}
VIDEO_DATASET_KEYS = {**DATASET_GENERAL_KEYS, "video_directory": str, "video_jsonl_file": str,
                      "cache_directory": str, "target_frames": "int_list", "frame_extraction": str,
                      "frame_stride": int, "frame_sample": int, "max_frames": int, "source_fps": float}
FRAME_EXTRACTIONS = ("head", "chunk", "slide", "uniform", "full")
# Keys kohyawan sets per dataset itself (folders); users set the rest.
DATASET_PATH_KEYS = ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file",
                     "cache_directory")
DATASET_KEYS = {k: t for k, t in {**IMAGE_DATASET_KEYS, **VIDEO_DATASET_KEYS}.items()
                if k not in DATASET_PATH_KEYS}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(type(value), type(value).__name__)


def check_train_value(dest: str, value: Any) -> Any:
    """Validate one wan_train_network.py option value as TOML would carry it; return it normalised."""
    opt = options()[dest]
    where = f"'{dest}'"
    if opt.is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} is an on/off flag: use true or false, not {value!r}")
        return value
    if opt.is_list:
        items = value if isinstance(value, list) else None
        if items is None:
            raise ConfigError(f"{where} takes a list, e.g. {dest}=[\"...\"], not {value!r}")
        return [_check_scalar(opt, v, where) for v in items]
    return _check_scalar(opt, value, where)


def _check_scalar(opt: Option, value: Any, where: str) -> Any:
    kind = opt.type
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where} takes a single value, not {_type_name(value)}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif kind == "_int_or_float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
    elif kind in ("str", "Path") or (kind is None and opt.choices):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        _check_readable_string(value, where)
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, opt.choices))}; got {value!r}")
    return value


def _check_readable_string(value: str, where: str) -> None:
    # musubi-tuner reads its TOML files with the toml 0.10 package, which silently reads a basic string
    # whose text starts with a double quote as an empty string.
    if value.startswith('"'):
        raise ConfigError(f"{where} cannot start with a double quote: musubi-tuner's TOML reader would read it as empty")


def check_dataset_value(key: str, value: Any) -> Any:
    """Validate one dataset key's value as musubi's schema takes it; return it normalised."""
    kind = DATASET_KEYS[key]
    where = f"dataset key '{key}'"
    if kind in _DATASET_CHECKS:
        return _DATASET_CHECKS[kind](value, where)
    value = _check_typed(kind, value, where)
    if key == "frame_extraction" and value not in FRAME_EXTRACTIONS:
        raise ConfigError(f"{where} must be one of {', '.join(FRAME_EXTRACTIONS)}; got {value!r}")
    if key in ("batch_size", "num_repeats", "max_frames", "frame_stride", "frame_sample") and value < 1:
        raise ConfigError(f"{where} must be at least 1, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_resolution(value: Any, where: str) -> list[int]:
    if _is_int(value):
        value = [value, value]
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise ConfigError(f"{where} must be an integer or [width, height], got {value!r}")
    if any(v <= 0 or v % 16 for v in value):
        raise ConfigError(f"{where} must be a multiple of 16, got {value!r}")
    return list(value)


def _check_frame_counts(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(_is_int(v) for v in value):
        raise ConfigError(f"{where} must be a list of integers, e.g. [17, 21], got {value!r}")
    bad = [v for v in value if v < 1 or wan.kept_frames(v) != v]
    if bad:
        fixed = ", ".join(str(wan.kept_frames(v)) for v in bad)
        raise ConfigError(f"{where}: frame counts must be 4n+1 (1, 5, 9, ... 81); "
                          f"{', '.join(map(str, bad))} would be cut to {fixed} by the trainer")
    return sorted(set(value))


_DATASET_CHECKS = {"res": _check_resolution, "int_list": _check_frame_counts}


def _check_typed(kind: type, value: Any, where: str) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind is int and not _is_int(value):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        _check_readable_string(value, where)
    return value


def script_path(trainer_dir: Path | None, script: str) -> str:
    """Where a WAN script lives in a musubi-tuner checkout (src layout), or its bare name."""
    if trainer_dir is None:
        return f"src/musubi_tuner/{script}"
    return str(Path(trainer_dir) / "src" / "musubi_tuner" / script)


def launch_prefix(launcher: str, python: str, mixed_precision: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The interpreter part of a training command line."""
    if launcher == "accelerate":
        return [python, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1",
                "--mixed_precision", mixed_precision, *extra]
    if launcher == "python":
        return [python]
    raise ConfigError(f"unknown launcher {launcher!r}: use accelerate or python")


def flag_args(values: Mapping[str, Any], script: str) -> list[str]:
    """Command-line arguments for ``values`` (dest -> value) on ``script``'s parser."""
    table = options(script)
    argv: list[str] = []
    for dest, value in values.items():
        opt = table[dest]
        if opt.is_flag:
            if value:
                argv.append(opt.option)
        elif value is not None:
            argv.append(opt.option)
            argv.extend(str(v) for v in value) if isinstance(value, list) else argv.append(str(value))
    return argv
