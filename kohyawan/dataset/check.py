"""``dataset check``: is a prepared (or hand-made) dataset folder usable by the trainer as it stands?

Checks what breaks training or silently loses data: dataset.toml against the trainer's schema rules,
media without a usable caption (the trainer skips such images and fails text caching for videos),
files that do not decode, clips whose frame count is not 4n+1 or that are shorter than the shortest
target length, and output sizes that differ from the configured resolution.

It checks the folder it is given: dataset.toml's folders are read relative to it (as ``prepare`` writes
them), and an absolute folder outside it (a copy or a move of a dataset prepared by an older kohyawan) is a
problem of its own, while the media checked are the ones of the same name in the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kohyawan.dataset.layout import TOML
from kohyawan.dataset.probe import count_frames, read_source
from kohyawan.dataset.scan import IMAGE_EXTS, VIDEO_EXTS
from kohyawan.files import toml

GENERAL_KEYS = {"resolution": (int, list), "caption_extension": (str,), "batch_size": (int,),
                "num_repeats": (int,), "enable_bucket": (bool,), "bucket_no_upscale": (bool,)}
IMAGE_KEYS = {**GENERAL_KEYS, "image_directory": (str,), "image_jsonl_file": (str,), "cache_directory": (str,),
              "control_directory": (str,), "multiple_target": (bool,), "fp_latent_window_size": (int,),
              "fp_1f_clean_indices": (list,), "fp_1f_target_index": (int,), "fp_1f_no_post": (bool,),
              "no_resize_control": (bool,), "control_resolution": (int, list)}
VIDEO_KEYS = {**GENERAL_KEYS, "video_directory": (str,), "video_jsonl_file": (str,), "control_directory": (str,),
              "target_frames": (list,), "frame_extraction": (str,), "frame_stride": (int,),
              "frame_sample": (int,), "max_frames": (int,), "cache_directory": (str,), "source_fps": (float,),
              "fp_latent_window_size": (int,)}
EXTRACTIONS = {"head", "chunk", "slide", "uniform", "full"}


@dataclass
class CheckResult:
    ok: bool
    problems: list = field(default_factory=list)
    images: int = 0
    clips: int = 0

    def as_dict(self) -> dict:
        return {"ok": self.ok, "problems": list(self.problems), "images": self.images, "clips": self.clips}


def _typed(value, kinds) -> bool:
    # bool is an int in Python but not in the trainer's schema
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _check_toml(dest: Path, doc: dict, problems: list[str]) -> list[dict]:
    """Check dataset.toml against the trainer's schema rules; return its ``[[datasets]]``."""
    extra = set(doc) - {"general", "datasets"}
    if extra:
        problems.append(f"{TOML}: unknown section(s) {sorted(extra)}")
    general = doc.get("general", {})
    problems += _key_problems(general, GENERAL_KEYS, "[general] has unknown key {key!r}",
                              "[general] {key} has the wrong type ({kind})")
    datasets = doc.get("datasets", [])
    if not datasets:
        problems.append(f"{TOML}: no [[datasets]]")
    for i, ds in enumerate(datasets):
        problems += _dataset_problems(dest, i, ds, general)
    caches = [ds["cache_directory"] for ds in datasets if "cache_directory" in ds]
    if len(caches) != len(set(caches)):
        problems.append(f"{TOML}: two datasets share a cache_directory (the trainer needs one per dataset)")
    return datasets


def _is_video(ds: dict) -> bool:
    return "video_directory" in ds or "video_jsonl_file" in ds


def _key_problems(table: dict, known: dict, unknown: str, wrong: str) -> list[str]:
    """Unknown keys and wrong types; ``unknown``/``wrong`` are message templates ({key}, {kind})."""
    problems = []
    for key, value in table.items():
        if key not in known:
            problems.append(f"{TOML}: " + unknown.format(key=key))
        elif not _typed(value, known[key]):
            problems.append(f"{TOML}: " + wrong.format(key=key, kind=type(value).__name__))
    return problems


def media_folder(dest: Path, ds: dict) -> tuple[Path | None, str | None]:
    """The media folder a ``[[datasets]]`` entry names, as found in ``dest``, and a problem when the entry
    points outside ``dest`` (then the folder of the same name in ``dest`` is the one checked)."""
    key = "video_directory" if "video_directory" in ds else "image_directory"
    named = ds.get(key)
    if not named:
        return None, None
    path = Path(named)
    if not path.is_absolute():
        return dest / path, None
    inside = dest.resolve()
    if path.resolve() == inside or inside in path.resolve().parents:
        return path, None
    problem = (f"{TOML}: {key} {named} is outside {dest}, so musubi-tuner given this file would read that folder, not this one "
               "(a moved or copied dataset?); rerun `kohyawan dataset prepare`, which writes folders relative to "
               "the dataset")
    return dest / path.name, problem


def _dataset_problems(dest: Path, i: int, ds: dict, general: dict) -> list[str]:
    """One ``[[datasets]]`` entry: keys and types, resolution, frame settings, its folder."""
    video = _is_video(ds)
    problems = _key_problems(ds, VIDEO_KEYS if video else IMAGE_KEYS, f"datasets[{i}] has unknown key {{key!r}}",
                             f"datasets[{i}].{{key}} has the wrong type ({{kind}})")
    reso = {**general, **ds}.get("resolution")
    values = reso if isinstance(reso, list) else [reso] if reso is not None else []
    if any(not _typed(v, (int,)) or v % 16 for v in values):
        problems.append(f"{TOML}: datasets[{i}] resolution {reso} is not made of multiples of 16")
    if video:
        frames = ds.get("target_frames", [1])
        if not all(_typed(n, (int,)) and n >= 1 and (n - 1) % 4 == 0 for n in frames):
            problems.append(f"{TOML}: datasets[{i}] target_frames {frames} are not all 4n+1")
        if ds.get("frame_extraction", "head") not in EXTRACTIONS:
            problems.append(f"{TOML}: datasets[{i}] frame_extraction {ds.get('frame_extraction')!r} is unknown")
    folder, outside = media_folder(dest, ds)
    if outside:
        problems.append(outside)
    elif folder is not None and not folder.is_dir():
        problems.append(f"{TOML}: datasets[{i}] folder {folder} does not exist")
    return problems


def _caption_problem(media: Path, extension: str) -> str | None:
    caption = media.with_suffix(extension)
    if not caption.is_file():
        return f"{media.name}: missing caption {caption.name}"
    try:
        text = read_source(caption).decode("utf-8-sig")
    except UnicodeDecodeError:
        return f"{caption.name}: caption is not valid UTF-8"
    if not text.strip():
        return f"{caption.name}: caption is empty"
    return None


def check_dataset(dest: Path) -> CheckResult:
    dest = Path(dest)
    result = CheckResult(ok=False)
    doc = _read_toml(dest, result.problems)
    if doc is None:
        return result
    datasets = _check_toml(dest, doc, result.problems)
    general = doc.get("general", {})
    for ds in datasets:
        _check_media(media_folder(dest, ds)[0], ds, {**general, **ds}, result)
    result.ok = not result.problems
    return result


def _read_toml(dest: Path, problems: list[str]) -> dict | None:
    """The folder's dataset.toml, or None with the reason in ``problems``."""
    if not dest.is_dir():
        problems.append(f"{dest} is not a folder")
        return None
    try:
        return toml.loads((dest / TOML).read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{TOML} is missing")
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{TOML} does not parse: {exc}")
    return None


def _check_media(folder: Path | None, ds: dict, merged: dict, result: CheckResult) -> None:
    """Every image or clip of one dataset entry's folder: caption, decodability, size, frame count; counted."""
    video = "video_directory" in ds
    if folder is None or not folder.is_dir():
        return
    exts = VIDEO_EXTS if video else IMAGE_EXTS
    extension = merged.get("caption_extension", ".txt")
    for media in sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and not p.name.startswith(".")):
        problem = _caption_problem(media, extension)
        if problem:
            result.problems.append(problem)
        frames, width, height, error = count_frames(media, "video" if video else "image")
        if error:
            result.problems.append(f"{media.name}: unreadable ({error[:160]})")
            continue
        result.problems += _media_problems(media, ds, merged, frames, (width, height))
        if video:
            result.clips += 1
        else:
            result.images += 1


def _media_problems(media: Path, ds: dict, merged: dict, frames: int, size: tuple[int, int]) -> list[str]:
    """A decoded file against its dataset entry: the configured size, and for clips a usable length."""
    problems = []
    reso = merged.get("resolution")
    want = tuple(reso) if isinstance(reso, list) else (reso, reso)
    if not merged.get("enable_bucket") and size != want:
        problems.append(f"{media.name}: {size[0]}x{size[1]}, the dataset says {want[0]}x{want[1]}")
    if "video_directory" in ds:
        shortest = min(ds.get("target_frames", [1]) or [1])
        if (frames - 1) % 4:
            problems.append(f"{media.name}: {frames} frames is not 4n+1 (the trainer would cut it)")
        elif frames < shortest and ds.get("frame_extraction", "head") != "full":
            problems.append(f"{media.name}: {frames} frames, shorter than target_frames {shortest}")
    return problems
