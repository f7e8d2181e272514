"""What the trainer will train on, from the data itself: per dataset of the dataset config kohyawan renders, each
item's training size (its bucket) and frame count, batched the way the trainer batches them (pure apart from
reading media sizes; see docs/architecture.md).

Items, buckets and frame extraction come from ``kohyawan.trainer.cachefiles`` (the trainer's rules); this module
only supplies what each media file holds, in this order: the prepare report (``report.json``: every output's
frame count and size), else the file itself (PIL for an image's size; an ffmpeg decode for a clip's frames), else
the settings (the resolution, and a clip as long as the settings allow) -- and says which it used. Images and
clips are separate datasets with their own buckets; an image is one frame. The trainer forms batches within one
bucket of one dataset, so the largest batch is min(batch_size, items in the bucket) of the bucket with the most
tokens, and that batch is the peak of memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kohyawan import wan
from kohyawan.trainer import cachefiles

BASES = ("report", "probed", "settings")


@dataclass(frozen=True)
class Shape:
    """One bucket of one dataset: items of the same training size and frame count."""

    dataset: int
    kind: str          # "image" | "video"
    width: int
    height: int
    frames: int
    items: int         # with num_repeats
    batch_size: int

    @property
    def largest_batch(self) -> int:
        return max(1, min(self.batch_size, self.items))

    @property
    def tokens(self) -> int:
        """Transformer tokens of one sample: VAE 4x in time (plus the first frame), 8x in space, 2x2 patches."""
        return wan.tokens(self.width, self.height, self.frames)

    def batch_sizes(self) -> dict[int, int]:
        """Batch size -> how many batches of it one epoch of this bucket forms."""
        full, rest = divmod(self.items, self.batch_size)
        sizes = {self.batch_size: full} if full else {}
        if rest:
            sizes[rest] = sizes.get(rest, 0) + 1
        return sizes


@dataclass(frozen=True)
class Workload:
    shapes: tuple[Shape, ...]
    basis: str                   # the weakest source used: "report" < "probed" < "settings"
    notes: tuple[str, ...] = ()

    @property
    def images(self) -> int:
        return sum(s.items for s in self.shapes if s.kind == "image")

    @property
    def clips(self) -> int:
        return sum(s.items for s in self.shapes if s.kind == "video")

    def peak(self) -> Shape | None:
        """The bucket whose largest batch has the most tokens: the step that needs the most memory."""
        return max(self.shapes, key=lambda s: (s.tokens * s.largest_batch, s.kind == "video"), default=None)

    def describe(self) -> str:
        peak = self.peak()
        if peak is None:
            return "data: no items"
        kinds = []
        for kind, word, n in (("image", "image", self.images), ("video", "clip", self.clips)):
            if n:
                sizes = sorted({(s.width, s.height, s.frames) for s in self.shapes if s.kind == kind})
                shown = ", ".join(f"{w}x{h}" + (f"x{f}" if kind == "video" else "") for w, h, f in sizes[-3:])
                kinds.append(f"{n} {word}{'s' if n != 1 else ''} ({'..., ' if len(sizes) > 3 else ''}{shown})")
        what = "images" if peak.kind == "image" else "clips"
        size = f"{peak.width}x{peak.height}" + (f"x{peak.frames}" if peak.kind == "video" else "")
        return (f"data: {' and '.join(kinds)}; largest batch: {peak.largest_batch} x {size} {what} "
                f"({_basis_words(self.basis)})")


def _basis_words(basis: str) -> str:
    return {"report": "sizes and frame counts from report.json",
            "probed": "sizes and frame counts read from the media",
            "settings": "NOT read from the data: assumed from the settings"}[basis]


# -- what each media file holds ------------------------------------------------------------------------

@dataclass(frozen=True)
class Facts:
    """Frame count and size per media file (absolute path), and where each came from."""

    known: Mapping[str, tuple[int, tuple[int, int]]]
    source: Mapping[str, str]            # path -> "report" | "probed"

    def lookup(self, path: str, is_image: bool) -> tuple[int, tuple[int, int]] | None:
        return self.known.get(os.path.abspath(path))


def report_facts(root: Path) -> dict[str, tuple[int, tuple[int, int]]]:
    """Every output of a prepare report: absolute path -> (frames, (width, height))."""
    try:
        report = json.loads((Path(root) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, tuple[int, tuple[int, int]]] = {}
    for item in report.get("items", []) if isinstance(report, dict) else []:
        size = item.get("output_size") if isinstance(item, dict) else None
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            continue
        frames = {str(c.get("output")): c.get("frames") for c in item.get("clips") or [] if isinstance(c, dict)}
        for rel in item.get("outputs") or []:
            n = 1 if item.get("kind") == "image" else frames.get(str(rel))
            if isinstance(n, int) and n > 0:
                out[os.path.abspath(Path(root) / str(rel))] = (n, (size[0], size[1]))
    return out


def _probe(path: str, is_image: bool) -> tuple[int, tuple[int, int]] | None:
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    if is_image:
        size = cachefiles.image_size(path, (0, 0))
        return (1, size) if all(size) else None
    count, size = cachefiles.video_facts(path, (0, 0))
    return (count, size) if count > 0 and all(size) else None


def gather(spec: Any, probe: bool = True) -> Facts:
    """What the media of ``spec.dataset_dir`` hold: the prepare report first, then (``probe``) the files."""
    root = Path(spec.dataset_dir)
    known = report_facts(root)
    source = {p: "report" for p in known}
    if probe:
        for ds in cachefiles.parse(_dataset_config(spec)):
            for media, _ in cachefiles.sources(ds):
                path = os.path.abspath(media)
                if path not in known:
                    found = _probe(path, ds.is_image)
                    if found is not None:
                        known[path], source[path] = found, "probed"
    return Facts(known, source)


# -- the workload of a spec ------------------------------------------------------------------------------

def _dataset_config(spec: Any) -> dict:
    from kohyawan.config.render import dataset_config
    from kohyawan.dataset import inventory

    inv = inventory.scan(spec.dataset_dir, spec.dataset.get("caption_extension", ".txt"))
    if not inv.folders:
        return {"general": {}, "datasets": []}
    return dataset_config(spec, Path(os.path.abspath(".kohyawan-estimate")), inv)[1]


def _assumed(ds: cachefiles.DatasetCfg) -> tuple[int, tuple[int, int]]:
    """What the settings allow at most: a clip as long as any item can be, at the dataset's resolution."""
    longest = ds.max_frames if ds.frame_extraction == "full" else max(ds.target_frames)
    return (1 if ds.is_image else longest), ds.resolution


def for_spec(spec: Any, facts: Facts | None) -> Workload:
    """The workload of ``spec`` on its dataset folder (from ``facts``), or from its settings alone."""
    if spec.dataset_dir is None or facts is None:
        return from_settings(spec.dataset, "no dataset given")
    datasets = cachefiles.parse(_dataset_config(spec))
    if not datasets:
        return from_settings(spec.dataset, f"no images or videos in {spec.dataset_dir}")
    return from_datasets(datasets, facts)


def from_datasets(datasets: list[cachefiles.DatasetCfg], facts: Facts) -> Workload:
    """The workload of parsed dataset configs: every item's bucket and frames, from ``facts`` where they know
    the file, else what the settings allow at most (and a note saying so)."""
    shapes: dict[tuple, int] = {}
    used: set[str] = set()
    assumed = 0
    for ds in datasets:
        def lookup(path: str, is_image: bool, ds=ds) -> tuple[int, tuple[int, int]]:
            nonlocal assumed
            found = facts.lookup(path, is_image)
            if found is None:
                assumed += 1
                used.add("settings")
                return _assumed(ds)
            used.add(facts.source.get(os.path.abspath(path), "probed"))
            return found

        for item in cachefiles.items(ds, lookup):
            key = (ds.index, "image" if ds.is_image else "video", item.size[0], item.size[1], item.frames,
                   ds.batch_size)
            shapes[key] = shapes.get(key, 0) + ds.num_repeats
    notes = []
    if assumed:
        notes.append(f"{assumed} media file(s) could not be read: their size and length were assumed from the "
                     "settings (the largest they allow)")
    basis = max(used, key=BASES.index) if used else "settings"
    return Workload(tuple(Shape(k[0], k[1], k[2], k[3], k[4], n, k[5]) for k, n in sorted(shapes.items())),
                    basis, tuple(notes))


def of_dataset_toml(path: Path) -> Workload | None:
    """The workload of a rendered dataset config (a run's or an attempt's ``dataset.toml``), from the prepare
    reports beside its media folders and the images' headers; clips no report knows are assumed as long as the
    settings allow (no decoding: this reads finished runs). None when the file cannot be read."""
    try:
        datasets = cachefiles.load(str(path))
    except (OSError, ValueError):
        return None
    known: dict[str, tuple[int, tuple[int, int]]] = {}
    for folder in {Path(ds.media_dir) for ds in datasets if ds.media_dir}:
        for root in (folder, folder.parent):
            known.update(report_facts(root))
    source = {p: "report" for p in known}
    for ds in datasets:
        if ds.is_image:
            for media, _ in cachefiles.sources(ds):
                path_abs = os.path.abspath(media)
                found = None if path_abs in known else _probe(path_abs, True)
                if found is not None:
                    known[path_abs], source[path_abs] = found, "probed"
    return from_datasets(datasets, Facts(known, source)) if datasets else None


def settings_frames(dataset: Mapping[str, Any]) -> int:
    """The longest item the dataset settings allow (4n+1), or 1 for an image dataset."""
    if dataset.get("frame_extraction") == "full":
        return wan.kept_frames(int(dataset.get("max_frames", 129)))
    frames = dataset.get("target_frames")
    if frames is None:
        return 1
    if isinstance(frames, (list, tuple)):
        return max(int(f) for f in frames) if frames else 1
    return int(frames)


def settings_resolution(dataset: Mapping[str, Any]) -> tuple[int, int]:
    res = dataset.get("resolution", [960, 544])
    if isinstance(res, (list, tuple)):
        return int(res[0]), int(res[1])
    return int(res), int(res)


def from_settings(dataset: Mapping[str, Any], why: str) -> Workload:
    """One clip at the settings' resolution and longest length: what an estimate without data assumes."""
    width, height = settings_resolution(dataset)
    frames = settings_frames(dataset)
    batch = int(dataset.get("batch_size") or 1)
    shape = Shape(0, "video" if frames > 1 else "image", width, height, frames, batch, batch)
    return Workload((shape,), "settings", (f"{why}: sizes and frame counts assumed from the settings",))


def epoch_batches(workload: Workload) -> list[tuple[Shape, int, int]]:
    """(shape, batch size, how many such batches) over one epoch: what the time per step averages over."""
    return [(s, size, n) for s in workload.shapes for size, n in s.batch_sizes().items()]
