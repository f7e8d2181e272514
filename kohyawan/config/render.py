"""RunSpec -> the trainer's files and command lines (pure), and writing them atomically.

Files: ``dataset.toml`` (musubi dataset config), one training TOML per training run (``train.toml``, or
``train_high.toml`` / ``train_low.toml`` when experts train separately), ``commands.sh`` and ``plan.json``.
Every TOML is rendered through ``templates/`` and parsed back to prove it says exactly what was meant.
Each dataset's ``cache_directory`` is a folder of the cache store (``kohyawan.cachestore.keys``: named by
what its files depend on, shared by every run, sweep and batch using the store) or, without a store, the
run folder's own ``cache/`` (how runs were laid out before the store; they keep it on resume).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jinja2

from kohyawan import __version__, wan
from kohyawan.cachestore import keys as cache_keys
from kohyawan.files import atomic, toml
from kohyawan.dataset import inventory
from kohyawan.config import steps as steps_mod, validate
from kohyawan.errors import ConfigError, DatasetError
from kohyawan.config.resources import templates_dir
from kohyawan.config.spec import RunSpec
from kohyawan.config.steps import Steps
from kohyawan.config.tomlfmt import toml_key, toml_value
from kohyawan.trainer import comment, musubi

PLAN_VERSION = 1
TRAIN_GROUP_ORDER = ("model", "wan", "network", "optimizer", "lr_scheduler", "training", "timestep",
                     "memory", "attention", "save_load", "metadata", "logging", "sample", "general")


@dataclass(frozen=True)
class Stage:
    name: str                     # cache_latents | cache_text_encoder | train | train_high | train_low
    argv: tuple[str, ...]
    expert: str | None = None     # train stages: both | high | low
    output_dir: str | None = None
    output_name: str | None = None
    config_file: str | None = None


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    out_dir: Path
    files: Mapping[str, str]      # relative name -> text
    stages: tuple[Stage, ...]
    steps: Steps | None
    document: dict
    warnings: tuple[str, ...] = ()
    config_dir: Path | None = None  # where the files go and what the commands name, when not out_dir

    @property
    def files_dir(self) -> Path:
        return self.config_dir or self.out_dir


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["toml"] = toml_value
    env.filters["toml_key"] = toml_key
    return env


def render_template(name: str, **context: Any) -> str:
    return _env().get_template(name).render(version=__version__, **context)


def _parse_back(name: str, text: str, intended: Mapping[str, Any]) -> None:
    parsed = toml.loads(text)
    flat = {}
    for section, body in parsed.items():
        if isinstance(body, dict):
            flat.update(body)
    if flat != dict(intended):
        raise AssertionError(f"{name}: rendered TOML does not read back as intended")  # a kohyawan bug


# -- dataset ---------------------------------------------------------------------------------------

def dataset_config(spec: RunSpec, out_dir: Path, inv: inventory.Inventory,
                   cache_store: Path | None = None) -> tuple[str, dict, list[dict]]:
    """The dataset TOML, what it parses to, and plan.json's ``caches`` (one entry per dataset)."""
    general = {k: spec.dataset[k] for k in musubi.DATASET_GENERAL_KEYS if k in spec.dataset}
    datasets, caches = [], []
    video_only = {k: v for k, v in spec.dataset.items() if k in musubi.VIDEO_DATASET_KEYS
                  and k not in musubi.DATASET_GENERAL_KEYS}
    roles = validate.model_roles(spec)
    for i, folder in enumerate(inv.folders):
        entry: dict[str, Any] = {f"{folder.kind}_directory": str(folder.path.resolve())}
        name = folder.path.name if folder.path != inv.root else f"{folder.kind}s"
        if folder.kind == "video":
            entry.update(video_only)
        if cache_store is None:
            cache = {"dataset": i, "kind": folder.kind, "media": entry[f"{folder.kind}_directory"],
                     "cache_directory": str(out_dir / "cache" / f"{i:02d}_{_safe(name)}")}
        else:
            label = f"{inv.root.resolve().name}-{name}" if folder.path != inv.root else inv.root.resolve().name
            cache = cache_keys.folder_for(cache_store, i, label, entry, general, vae=roles.get("vae"),
                                          t5=roles.get("t5"), i2v=encodes_image_latents(spec),
                                          fp8_t5=bool(spec.train.get("fp8_t5"))).document()
        caches.append(cache)
        datasets.append({**{k: v for k, v in entry.items() if k.endswith("_directory")},
                         "cache_directory": cache["cache_directory"],
                         **{k: v for k, v in entry.items() if not k.endswith("_directory")}})
    text = render_template("dataset.toml.j2", profile=spec.profile, variant=spec.variant,
                           source_dir=str(inv.root.resolve()), general=general, datasets=datasets)
    parsed = toml.loads(text)
    if parsed != {"general": general, "datasets": datasets}:
        raise AssertionError("dataset.toml does not read back as intended")  # a kohyawan bug
    return text, parsed, caches


def encodes_image_latents(spec: RunSpec) -> bool:
    """Tasks whose latent caching also encodes the start image (``--i2v``): see ``wan.TASKS``."""
    return wan.TASKS[spec.task].start_image


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "data"


# -- training runs ---------------------------------------------------------------------------------

def _runs(spec: RunSpec) -> list[tuple[str, str]]:
    """(stage name, expert) per training run."""
    if spec.task not in musubi.DUAL_EXPERT_TASKS or spec.expert == "both":
        return [("train", "both")]
    if spec.expert == "sequential":
        return [("train_high", "high"), ("train_low", "low")]
    return [(f"train_{spec.expert}", spec.expert)]


def _train_values(spec: RunSpec, expert: str, out_dir: Path, config_dir: Path, output_name: str,
                  stp: Steps | None) -> dict:
    values = dict(spec.train)
    roles = validate.model_roles(spec)
    values["task"] = spec.task
    dual = spec.task in musubi.DUAL_EXPERT_TASKS
    boundary = musubi.TIMESTEP_BOUNDARY.get(spec.task)
    if expert == "both":
        values["dit"] = str(roles["dit"])
        if dual:
            values["dit_high_noise"] = str(roles["dit_high_noise"])
            values.setdefault("timestep_boundary", boundary)
    else:
        values["dit"] = str(roles["dit_high_noise"] if expert == "high" else roles["dit"])
        values.setdefault("min_timestep", boundary if expert == "high" else 0)
        values.setdefault("max_timestep", 1000 if expert == "high" else boundary)
        values.setdefault("preserve_distribution_shape", True)
    values["vae"] = str(roles["vae"])
    values["t5"] = str(roles["t5"])
    values["dataset_config"] = str(config_dir / "dataset.toml")
    values["output_dir"] = str(out_dir / "output")
    values["output_name"] = output_name
    if stp is not None and isinstance(values.get("lr_warmup_steps"), float):
        values["lr_warmup_steps"] = stp.warmup_steps
    # every checkpoint the trainer writes carries this: the task and the expert (musubi records neither)
    values["training_comment"] = comment.training_comment(__version__, task=spec.task, expert=expert,
                                                          profile=spec.profile, variant=spec.variant,
                                                          user=spec.train.get("training_comment"))
    for dest, value in values.items():
        musubi.check_train_value(dest, value)
    return values


def train_toml(spec: RunSpec, values: Mapping[str, Any], expert: str) -> str:
    table = musubi.options()
    grouped: dict[str, list] = {}
    for dest in table:  # option-table order keeps output stable and readable
        if dest in values and values[dest] is not None and not (table[dest].is_flag and values[dest] is False):
            grouped.setdefault(table[dest].group, []).append((dest, values[dest]))
    order = sorted(grouped, key=lambda g: TRAIN_GROUP_ORDER.index(g) if g in TRAIN_GROUP_ORDER else 99)
    description = f"Profile {spec.profile}" + (f", variant {spec.variant}" if spec.variant else "") + \
        f", task {spec.task}, expert {expert}."
    text = render_template("train.toml.j2", groups=[(g, grouped[g]) for g in order], description=description)
    _parse_back("train TOML", text, {k: v for g in grouped.values() for k, v in g})
    return text


# -- commands --------------------------------------------------------------------------------------

def _cache_stages(spec: RunSpec, config_dir: Path, trainer_dir: Path | None, python: str,
                  skip_existing: bool) -> list[Stage]:
    """Both caching commands. With a shared store they skip items already cached (``--skip_existing``)
    and never pass ``--keep_cache``: training globs the cache folder, so the cache files of media no
    longer in the dataset must go, and the scripts remove them (see docs/architecture.md, "Caches")."""
    roles = validate.model_roles(spec)
    dataset_toml = str(config_dir / "dataset.toml")
    latents = [python, musubi.script_path(trainer_dir, musubi.CACHE_LATENTS_SCRIPT),
               "--dataset_config", dataset_toml, "--vae", str(roles["vae"])]
    if encodes_image_latents(spec):
        latents.append("--i2v")
    if spec.train.get("vae_cache_cpu"):
        latents.append("--vae_cache_cpu")
    text = [python, musubi.script_path(trainer_dir, musubi.CACHE_TE_SCRIPT),
            "--dataset_config", dataset_toml, "--t5", str(roles["t5"]), "--batch_size", "16"]
    if spec.train.get("fp8_t5"):
        text.append("--fp8_t5")
    if skip_existing:
        latents.append("--skip_existing")
        text.append("--skip_existing")
    return [Stage("cache_latents", tuple(latents)), Stage("cache_text_encoder", tuple(text))]


STORE_NOTE = ("The caches are kohyawan's shared cache store: --skip_existing encodes only items not cached yet.\n"
              "# After replacing a media file or editing a caption under the same name, delete that item's cache\n"
              "# files there first ('kohyawan run' checks this itself).")
STAGE_TITLES = {"cache_latents": "1. Cache latents (needs the VAE)",
                "cache_text_encoder": "2. Cache text-encoder outputs (needs umT5-XXL)",
                "train": "3. Train", "train_high": "3. Train the high-noise expert",
                "train_low": "4. Train the low-noise expert"}


def _shell_line(argv: tuple[str, ...], python: str) -> str:
    parts = [shlex.quote(a) for a in argv]
    if argv and argv[0] == python:
        parts[0] = '"${PYTHON:-' + python.replace('"', '\\"').replace("$", "\\$") + '}"'
    return " \\\n    ".join(_pairs(parts))


def _pairs(parts: list[str]) -> list[str]:
    """Keep an option and its value on one line."""
    lines, i = [], 0
    while i < len(parts):
        if parts[i].startswith("--") and i + 1 < len(parts) and not parts[i + 1].startswith("--"):
            lines.append(f"{parts[i]} {parts[i + 1]}")
            i += 2
        else:
            lines.append(parts[i])
            i += 1
    head = []
    while lines and not lines[0].startswith("--"):
        head.append(lines.pop(0))
    return [" ".join(head)] + lines


# -- the plan --------------------------------------------------------------------------------------

def build_plan(spec: RunSpec, out_dir: Path, *, trainer_dir: Path | None = None, python: str = "python",
               launcher: str = "accelerate", processes: int = 1, accelerate_args: tuple[str, ...] = (),
               config_dir: Path | None = None, cache_store: Path | None = None) -> Plan:
    """The plan of ``spec`` with its outputs and caches in ``out_dir``; its files (and every path the
    commands give the trainer for them) in ``config_dir`` when given (a run's attempt folder), else
    ``out_dir`` too. ``cache_store``: the shared cache store's folder (None: the run folder's ``cache/``)."""
    if spec.dataset_dir is None:
        raise DatasetError("--dataset is required to render a plan")
    out_dir = Path(os.path.abspath(out_dir))
    files_dir = Path(os.path.abspath(config_dir)) if config_dir is not None else out_dir
    warnings = list(dict.fromkeys([*spec.notes, *validate.check(spec)]))  # notes may hold the rules' already
    inv = inventory.scan(spec.dataset_dir, spec.dataset.get("caption_extension", ".txt"))
    if not inv.folders:
        raise DatasetError(f"no images or videos found in {spec.dataset_dir}")
    for folder in inv.folders:
        if folder.uncaptioned:
            warnings.append(f"{folder.uncaptioned} of {folder.count} {folder.kind}s in {folder.path} have no "
                            f"{spec.dataset.get('caption_extension', '.txt')} caption")
    stp = steps_mod.count(inv, spec.dataset, spec.train, processes)
    files: dict[str, str] = {}
    files["dataset.toml"], _, caches = dataset_config(spec, out_dir, inv, cache_store)
    base_name = spec.train.get("output_name") or "_".join(filter(None, [spec.profile, spec.variant]))
    stages = _cache_stages(spec, files_dir, trainer_dir, python, skip_existing=cache_store is not None)
    runs_doc = []
    multi = ("--multi_gpu", "--num_processes", str(processes)) if processes > 1 else ()
    prefix = musubi.launch_prefix(launcher, python, spec.train.get("mixed_precision", "bf16"),
                                  (*multi, *accelerate_args))
    for stage_name, expert in _runs(spec):
        output_name = base_name if expert == "both" else f"{base_name}_{expert}"
        config_name = "train.toml" if stage_name == "train" else f"{stage_name}.toml"
        values = _train_values(spec, expert, out_dir, files_dir, output_name, stp)
        files[config_name] = train_toml(spec, values, expert)
        config_path = str(files_dir / config_name)
        argv = (*prefix, musubi.script_path(trainer_dir, musubi.TRAIN_SCRIPT), "--config_file", config_path)
        stages.append(Stage(stage_name, argv, expert, values["output_dir"], output_name, config_path))
        runs_doc.append({"stage": stage_name, "expert": expert, "config_file": config_path,
                         "output_dir": values["output_dir"], "output_name": output_name,
                         "dit": values["dit"], "timesteps": [values.get("min_timestep"), values.get("max_timestep")]})
    cwd = str(trainer_dir) if trainer_dir else None
    lines = [{"title": STAGE_TITLES[s.name], "line": _shell_line(s.argv, python)} for s in stages]
    cd_target = shlex.quote(str(trainer_dir)) if trainer_dir else \
        '"${MUSUBI_TUNER_DIR:?set MUSUBI_TUNER_DIR to your musubi-tuner checkout}"'
    files["commands.sh"] = render_template("commands.sh.j2", profile=spec.profile, variant=spec.variant,
                                           task=spec.task, expert=spec.expert, trainer_dir=cwd,
                                           cd_target=cd_target, stages=lines,
                                           cache_note=STORE_NOTE if cache_store is not None else None)
    document = plan_document(spec, out_dir, stages, stp, runs_doc, warnings, cwd, sorted(files))
    document["caches"] = caches
    files["plan.json"] = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return Plan(spec, out_dir, files, tuple(stages), stp, document, tuple(warnings),
                files_dir if config_dir is not None else None)


def plan_document(spec: RunSpec, out_dir: Path, stages, stp: Steps, runs, warnings, cwd, files) -> dict:
    values = []
    for section, mapping in (("train", spec.train), ("dataset", spec.dataset)):
        for key in sorted(mapping):
            values.append({"key": f"{section}.{key}", "value": mapping[key],
                           "source": spec.origin.get(f"{section}.{key}", "unknown")})
    for section in sorted(spec.extra):
        for key in sorted(spec.extra[section]):
            values.append({"key": f"{section}.{key}", "value": spec.extra[section][key],
                           "source": spec.origin.get(f"{section}.{key}", "unknown")})
    return {
        "version": PLAN_VERSION, "kohyawan_version": __version__, "profile": spec.profile,
        "variant": spec.variant, "task": spec.task, "expert": spec.expert,
        "dataset": str(Path(spec.dataset_dir).resolve()), "out_dir": str(out_dir),
        "models": spec.models.as_dict(), "values": values,
        "steps": {"items": stp.items, "batches_per_epoch": stp.batches_per_epoch,
                  "steps_per_epoch": stp.steps_per_epoch, "epochs": stp.epochs,
                  "total_steps": stp.total_steps, "warmup_steps": stp.warmup_steps, "exact": stp.exact},
        "runs": runs,
        "stages": [{"name": s.name, "argv": list(s.argv), "cwd": cwd} for s in stages],
        "files": [f for f in files if f != "plan.json"] + ["plan.json"],
        "warnings": list(warnings),
    }


def write_plan(plan: Plan) -> list[Path]:
    """Write every file atomically; commands.sh is executable. Returns the paths written."""
    try:
        plan.files_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {plan.files_dir}: {exc.strerror}") from None
    written = []
    for name, text in plan.files.items():
        path = plan.files_dir / name
        atomic.write_text(path, text, mode=0o755 if name.endswith(".sh") else 0o644)
        written.append(path)
    return written
