"""Finding, layering and resolving profiles into a RunSpec, with the origin of every value.

Layers, lowest first: built-in ``base`` < profile (and the profiles it extends) < variant < the guide's
dataset-size rules < what the model files require (an fp16 DiT trains in fp16) < what the dataset was
prepared at (``dataset prepare``'s report.json: the resolution) < project file (``kohyawan.toml``) <
``--set`` on the command line. Profiles are looked up in the built-in folder, then
the user's folder (``$XDG_CONFIG_HOME/kohyawan/profiles``), then the project's ``profiles/`` folder (next
to its ``kohyawan.toml``); a later folder's profile of the same name replaces an
earlier one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from kohyawan.files import toml
from kohyawan.dataset import inventory
from kohyawan.run import rungs
from kohyawan.errors import ConfigError, DatasetError
from kohyawan.config.resources import profiles_dir
from kohyawan.config.spec import EXPERT_MODES, TASKS, Layers, Models, RunSpec, _freeze

PROJECT_FILE = "kohyawan.toml"
VARIANTS_FILE = "variants.toml"
NOT_PROFILES = {VARIANTS_FILE, "gpus.toml"}
PROJECT_SETTINGS = ("profile", "task", "expert", "variant", "registry", "runs_dir", "trainer_dir", "python",
                    "cache_dir")

# The guide's dataset-size rules: (lowest sample count, network dim range, epoch range).
SIZE_RULES = ((800, (96, 128), (8, 12)), (400, (64, 96), (10, 15)), (200, (48, 64), (12, 18)),
              (100, (32, 48), (15, 20)))


def user_profiles_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kohyawan" / "profiles"


def search_path(project_dir: Path | None = None) -> list[Path]:
    dirs = [profiles_dir(), user_profiles_dir()]
    if project_dir is not None:
        dirs.append(project_dir / "profiles")
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in {x.resolve() for x in dirs[:i]}]


def _read_toml(path: Path) -> dict:
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def available(project_dir: Path | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in search_path(project_dir):
        for path in sorted(folder.glob("*.toml")):
            if path.name not in NOT_PROFILES:
                found[path.stem] = path
    return found


def variants(project_dir: Path | None = None) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for folder in search_path(project_dir):
        path = folder / VARIANTS_FILE
        if path.is_file():
            found.update(_read_toml(path))
    return found


def _chain(name: str, known: Mapping[str, Path]) -> list[tuple[str, dict]]:
    """The profile and its ancestors, base first."""
    chain: list[tuple[str, dict]] = []
    seen = set()
    while name:
        if name in seen:
            raise ConfigError(f"profile '{name}' extends itself (cycle: {' -> '.join(seen)})")
        seen.add(name)
        if name not in known:
            import difflib
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; available: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown profile '{name}'{hint}")
        table = _read_toml(known[name])
        chain.append((name, table))
        name = table.get("extends", "base" if name != "base" else None)
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{known[chain[-1][0]]}: 'extends' must be a profile name")
    return list(reversed(chain))


def find_project_file(start: Path | None = None) -> Path | None:
    path = (start or Path.cwd()) / PROJECT_FILE
    return path if path.is_file() else None


def project_settings(project_file: Path | None) -> dict[str, Any]:
    """The ``[kohyawan]`` table of a project file: defaults for command options (profile, registry, ...)."""
    if project_file is None:
        return {}
    table = _read_toml(project_file).get("kohyawan", {})
    unknown = set(table) - set(PROJECT_SETTINGS)
    if unknown:
        raise ConfigError(f"{project_file}: unknown key(s) in [kohyawan]: {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(PROJECT_SETTINGS)})")
    return table


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value; a bare word that is not TOML is taken as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
    try:
        value = toml.loads(f"v = {raw.strip()}")["v"]
    except toml.TOMLDecodeError:
        if any(c in raw for c in "[]{}\"'=") or not raw.strip():
            raise ConfigError(f"--set {key}: {raw!r} is not a valid TOML value") from None
        value = raw.strip()
    return key, value


@dataclass(frozen=True)
class SizeRule:
    samples: int
    dim_range: tuple[int, int]
    epoch_range: tuple[int, int]


def size_rule(samples: int) -> SizeRule | None:
    for floor, dims, epochs in SIZE_RULES:
        if samples >= floor:
            return SizeRule(samples, dims, epochs)
    return None


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))


def _apply_size_rules(layers: Layers, inv: inventory.Inventory, notes: list[str]) -> None:
    rule = size_rule(inv.samples)
    if rule is None:
        notes.append(f"dataset has {inv.samples} samples, below the guide's smallest size rule (100): "
                     f"no dataset-size rule applies to network_dim and epochs")
        return
    dim = layers.train.get("network_dim")
    if isinstance(dim, int):
        new_dim = _clamp(dim, rule.dim_range)
        if new_dim != dim:
            if layers.train.get("network_alpha") == dim:
                layers.set("train.network_alpha", float(new_dim), "dataset-rule")
            layers.set("train.network_dim", new_dim, "dataset-rule")
            notes.append(f"network_dim {dim} -> {new_dim}: {inv.samples} samples, guide range "
                         f"{rule.dim_range[0]}-{rule.dim_range[1]}")
    epochs = layers.train.get("max_train_epochs")
    if isinstance(epochs, int):
        new_epochs = _clamp(epochs, rule.epoch_range)
        if new_epochs != epochs:
            layers.set("train.max_train_epochs", new_epochs, "dataset-rule")
            notes.append(f"max_train_epochs {epochs} -> {new_epochs}: {inv.samples} samples, guide range "
                         f"{rule.epoch_range[0]}-{rule.epoch_range[1]}")


def _apply_model_rules(layers: Layers, models: Models | None, expert: str, notes: list[str]) -> None:
    """musubi-tuner trains an fp16 DiT only in fp16 and a bf16 DiT only in bf16: follow the checkpoint."""
    if models is None:
        return
    path = (models.dit_high_noise or models.dit) if expert == "high" else (models.dit or models.dit_high_noise)
    if not path:
        return
    try:
        from kohyawan.modelfiles.identify import identify
        dtype = identify(path).dtype
    except Exception:  # unreadable or missing: validation reports it with the option name
        return
    wanted = {"fp16": "fp16", "bf16": "bf16"}.get(dtype)
    current = layers.train.get("mixed_precision")
    if wanted and current not in (wanted, "no"):
        layers.set("train.mixed_precision", wanted, "model-file")
        notes.append(f"mixed_precision {current} -> {wanted}: {Path(path).name} holds {dtype} weights, and "
                     f"musubi-tuner trains such a DiT only in {wanted}")


PREPARED = "dataset-report"  # the origin of a value taken from what ``dataset prepare`` recorded


def _apply_prepared_resolution(layers: Layers, inv: inventory.Inventory) -> Any:
    """The trainer trains at the size the media were prepared at (with bucket_no_upscale it never scales
    them up): the plan says so, rather than the profile's resolution. Returns the value it replaced."""
    side, before = inv.prepared_resolution, layers.dataset.get("resolution")
    if side is not None:
        layers.set("dataset.resolution", [side, side], PREPARED)
    return before


def _note_prepared_resolution(layers: Layers, inv: inventory.Inventory, replaced: Any, notes: list[str]) -> None:
    """Say which resolution is used when it is not the profile's: the prepared one, or the user's over it."""
    side, wanted, source = inv.prepared_resolution, layers.dataset.get("resolution"), \
        layers.origin.get("dataset.resolution")
    if side is None or wanted == replaced == [side, side]:
        return
    if source == PREPARED:
        notes.append(f"resolution {replaced} -> {wanted}: the media in {inv.root} were prepared at {side}x{side} "
                     f"({inventory.REPORT})")
        return
    if wanted == [side, side]:
        return
    area = wanted[0] * wanted[1] if isinstance(wanted, list) else wanted * wanted
    kept = area > side * side and layers.dataset.get("enable_bucket") and layers.dataset.get("bucket_no_upscale")
    effect = (f"with bucket_no_upscale the trainer still trains at {side}x{side}" if kept
              else f"the trainer resizes them to {wanted}")
    notes.append(f"resolution {wanted} ({'--set' if source == 'set' else source}) differs from the {side}x{side} the "
                 f"media in {inv.root} were prepared at ({inventory.REPORT}): {effect}")


def _imply_head_extraction(layers: Layers, notes: list[str]) -> None:
    """A user who sets target_frames wants clips cut to those lengths: that needs frame_extraction head."""
    user = lambda key: layers.origin.get(key, "").startswith(("set", "project:"))  # noqa: E731
    if user("dataset.target_frames") and not user("dataset.frame_extraction") \
            and layers.dataset.get("frame_extraction") == "full":
        layers.set("dataset.frame_extraction", "head", "implied by target_frames")
        notes.append("frame_extraction full -> head: target_frames was set, and only head/chunk/slide/uniform "
                     "extraction cut clips to target_frames")


def _size_warning(extra: Mapping[str, Any], inv: inventory.Inventory) -> str | None:
    meta = extra.get("profile", {})
    min_images, min_clips = meta.get("min_images"), meta.get("min_clips")
    enough = (min_images is not None and inv.images >= min_images) or \
             (min_clips is not None and inv.clips >= min_clips)
    if enough or (min_images is None and min_clips is None):
        return None
    wants = " or ".join(x for x in (f"{min_images} images" if min_images else "",
                                    f"{min_clips} clips" if min_clips else "") if x)
    return f"dataset has {inv.images} images and {inv.clips} clips; the profile's minimum is {wants}"


def resolve(profile: str, *, variant: str | None = None, task: str = "t2v-A14B", expert: str = "both",
            dataset_dir: Path | None = None, models: Models | None = None, sets: Sequence[str] = (),
            project_file: Path | None = None) -> RunSpec:
    """Layer everything (see the module docstring) into one frozen RunSpec; ``notes`` say what was adjusted."""
    _check_choices(task, expert)
    # the project's own profiles/ folder sits next to its kohyawan.toml
    project_dir = project_file.parent if project_file else None
    layers, notes = Layers(), []
    _merge_profile(layers, profile, task, project_dir)
    if variant:
        _merge_variant(layers, variant, project_dir)
    inv = None
    if dataset_dir is not None:
        inv = _inventory(dataset_dir, layers)
        _apply_size_rules(layers, inv, notes)
    _apply_model_rules(layers, models, expert, notes)
    replaced = _apply_prepared_resolution(layers, inv) if inv is not None else None
    _merge_user_settings(layers, project_file, sets)
    if inv is not None:
        _note_prepared_resolution(layers, inv, replaced, notes)
    _imply_head_extraction(layers, notes)
    for kind in ("vram", "ram"):
        rungs.validate_names(layers.extra.get("ladder", {}).get(kind, []), f"[ladder] {kind}")
    if inv is not None:
        warning = _size_warning(layers.extra, inv)
        if warning:
            notes.append(warning)
    return RunSpec(profile=profile, variant=variant, task=task, expert=expert,
                   dataset_dir=Path(dataset_dir) if dataset_dir is not None else None,
                   models=models or Models(), train=_freeze(layers.train), dataset=_freeze(layers.dataset),
                   extra=_freeze(layers.extra), origin=_freeze(layers.origin), notes=tuple(notes))


def _check_choices(task: str, expert: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if expert not in EXPERT_MODES:
        raise ConfigError(f"unknown expert mode '{expert}'; choose one of {', '.join(EXPERT_MODES)}")


def _merge_profile(layers: Layers, profile: str, task: str, project_dir: Path | None) -> None:
    """The profile's chain, base first; each profile's ``[task.<task>]`` table right after the profile."""
    for name, table in _chain(profile, available(project_dir)):
        source = "base" if name == "base" else f"profile:{name}"
        layers.merge_table(table, source, where=f"profile '{name}'")
        task_table = table.get("task", {}).get(task)
        if task_table:
            layers.merge_table(task_table, f"{source} [task.{task}]", where=f"profile '{name}' [task.{task}]")


def _merge_variant(layers: Layers, variant: str, project_dir: Path | None) -> None:
    known = variants(project_dir)
    if variant not in known:
        raise ConfigError(f"unknown variant '{variant}'; available: {', '.join(sorted(known))}")
    body = {k: v for k, v in known[variant].items() if k != "description"}
    layers.merge_table(body, f"variant:{variant}", where=f"variant '{variant}'")


def _inventory(dataset_dir: Path | str, layers: Layers) -> inventory.Inventory:
    """What the dataset folder holds; a missing or empty folder is an error here, before any rule uses it."""
    if not Path(dataset_dir).is_dir():
        raise DatasetError(f"dataset folder not found: {dataset_dir}")
    inv = inventory.scan(Path(dataset_dir), layers.dataset.get("caption_extension", ".txt"))
    if not inv.folders:
        raise DatasetError(f"no images or videos found in {dataset_dir} (looked in images/, videos/ and the folder itself)")
    return inv


def _merge_user_settings(layers: Layers, project_file: Path | None, sets: Sequence[str]) -> None:
    """The project file, then ``--set`` items: the user's word is last."""
    if project_file is not None:
        table = {k: v for k, v in _read_toml(project_file).items() if k != "kohyawan"}
        layers.merge_table(table, f"project:{project_file.name}", where=str(project_file))
    for item in sets:
        key, value = parse_set(item)
        layers.set(key, value, "set")
