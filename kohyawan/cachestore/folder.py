"""One cache folder and one caching stage: is every item of the dataset cached, fresh and whole?

A stage's completion marker (``.complete-latents.json`` / ``.complete-text.json``, written atomically and
last, after the script succeeded) vouches, per item, for the input it was cached from (the media file's
size and mtime for latents, the caption's digest for text) and the exact files (name and size) that hold
it. The marker is never trusted beyond that: an item whose input changed, or whose files are not exactly
the vouched ones, is not complete. Items the marker does not vouch for (new items, or a run killed
half-way) are inspected: a file whose safetensors header or size is wrong (a write cut short: musubi
writes in place, and ``--skip_existing`` only asks whether the file exists) is damaged, a latent older
than its media or a text cache whose recorded caption is not the current one is stale; both are removed
before the script runs. A whole, fresh image latent or text cache is adopted as it is; a video's latents
are only adopted through the script (which crops a video yields is the script's to say). Cache files of
items no longer in the dataset are removed too (what the scripts do without ``--keep_cache``): training
globs the folder and would train on them. See docs/architecture.md ("Caches").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kohyawan.errors import ModelFileError
from kohyawan.files import atomic, jsonfile
from kohyawan.modelfiles.header import read_header
from kohyawan.trainer.cachefiles import LATENT_SUFFIX, TEXT_SUFFIX, DatasetCfg, cache_file_key, caption_path, \
    item_key, sources

KEY_DOCUMENT = ".kohyawan-cache.json"
MARKERS = {"cache_latents": ".complete-latents.json", "cache_text_encoder": ".complete-text.json"}
MARKER_VERSION = 1
STAMP = "%Y-%m-%dT%H:%M:%SZ"     # UTC, in markers, key documents, uses/ and run.json's caches


def utc_stamp(seconds: float | None = None) -> str:
    """``seconds`` (default: now) as the store writes times."""
    return time.strftime(STAMP, time.gmtime(seconds))


@dataclass(frozen=True)
class Source:
    key: str
    media: str
    caption: str | None
    caption_file: str | None


@dataclass
class Survey:
    """What one stage finds in one folder: items to cache, files to remove (name -> why), items whose
    files can be adopted as they are, and the input of every item (what a marker records)."""

    stage: str
    folder: Path
    missing: list[str] = field(default_factory=list)
    remove: dict[str, str] = field(default_factory=dict)
    adopt: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    items: int = 0

    @property
    def complete(self) -> bool:
        return not (self.missing or self.remove or self.adopt)

    def reason(self) -> str | None:
        """Why the folder is not complete for this stage, in one line (None: it is)."""
        if self.complete:
            return None
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of {self.items} item(s) to cache")
        stale = [why for why in self.remove.values() if why != "not in the dataset"]
        if stale:
            parts.append(f"{len(stale)} damaged or stale file(s)")
        if len(stale) < len(self.remove):
            parts.append(f"{len(self.remove) - len(stale)} file(s) of items no longer in the dataset")
        if self.adopt and not self.missing:
            parts.append(f"{len(self.adopt)} item(s) cached but not yet recorded")
        return f"{self.folder.name}: " + ", ".join(parts)


def dataset_sources(ds: DatasetCfg) -> dict[str, Source]:
    found = {}
    for media, caption in sources(ds):
        cap = None if ds.jsonl else caption_path(media, ds)
        found[item_key(media)] = Source(item_key(media), media, caption, cap)
    return found


def stage_files(stage: str, folder: Path, is_image: bool) -> dict[str, dict[str, int]]:
    """Item key -> {file name: size} of the stage's cache files in ``folder`` (as training would parse them)."""
    found: dict[str, dict[str, int]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    text = stage == "cache_text_encoder"
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not name.endswith(TEXT_SUFFIX if text else LATENT_SUFFIX):
            continue
        key = cache_file_key(name, is_image)
        if key is not None:
            try:
                found.setdefault(key, {})[name] = entry.stat().st_size
            except FileNotFoundError:
                continue
    return found


def item_input(stage: str, src: Source) -> str:
    """What an item's cache depends on besides the folder's key: its media file or its caption."""
    if stage == "cache_text_encoder":
        return "caption:" + hashlib.sha256((src.caption if src.caption is not None else "\0none").encode()).hexdigest()[:16]
    try:
        st = os.stat(src.media)
    except OSError:
        return "media:missing"
    return f"media:{st.st_size}:{st.st_mtime_ns}"


def read_marker(stage: str, folder: Path, key: str | None) -> dict[str, Any]:
    """The items a marker vouches for ({} without a usable marker, or one written for another key)."""
    doc = jsonfile.read_object(folder / MARKERS[stage])
    if doc is None or doc.get("version") != MARKER_VERSION or (key and doc.get("key") != key):
        return {}
    items = doc.get("items")
    return items if isinstance(items, dict) else {}


def whole(path: Path) -> tuple[bool, dict[str, str]]:
    """(the safetensors file is whole: header readable and size exactly what it describes, its metadata)."""
    try:
        header = read_header(path)
    except ModelFileError:
        return False, {}
    return header.file_size == 8 + header.header_size + header.data_size, dict(header.metadata)


def _file_problem(stage: str, path: Path, src: Source) -> str | None:
    ok, meta = whole(path)
    if not ok:
        return "damaged (cut short or unreadable)"
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return "gone"
    if stage == "cache_latents":
        media = os.stat(src.media).st_mtime_ns if os.path.exists(src.media) else 0
        return "older than its media" if mtime < media else None
    if "caption1" in meta:
        return None if meta["caption1"] == src.caption else "its caption changed"
    cap = src.caption_file
    return "older than its caption" if cap and os.path.exists(cap) and mtime < os.stat(cap).st_mtime_ns else None


def survey(stage: str, ds: DatasetCfg, folder: Path, key: str | None) -> Survey:
    """Read-only: what ``stage`` must do in ``folder`` for the dataset ``ds`` (safe under a shared lock)."""
    srcs = dataset_sources(ds)
    files = stage_files(stage, folder, ds.is_image)
    vouched = read_marker(stage, folder, key)
    out = Survey(stage, folder, items=len(srcs))
    text = stage == "cache_text_encoder"
    for k, src in srcs.items():
        have = files.get(k, {})
        out.inputs[k] = item_input(stage, src)
        entry = vouched.get(k)
        if entry and entry.get("input") == out.inputs[k] and entry.get("files") == have:
            continue
        if entry and entry.get("input") != out.inputs[k]:
            out.remove.update({name: "its input changed" for name in have})
            out.missing.append(k)
            continue
        problems = {name: _file_problem(stage, folder / name, src) for name in have}
        out.remove.update({name: why for name, why in problems.items() if why})
        if have and not any(problems.values()) and (text or ds.is_image):
            out.adopt.append(k)
        else:
            out.missing.append(k)
    kept = _media_stems(ds)
    for k, names in files.items():
        if k not in srcs and k not in kept:
            out.remove.update({name: "not in the dataset" for name in names})
    return out


PLUGIN_IMAGE_EXT = (".jxl", ".JXL")   # musubi reads these only with a JPEG-XL plugin installed


def _media_stems(ds: DatasetCfg) -> set[str]:
    """Stems of images musubi may read through a plugin: their cache files are left alone although
    kohyawan does not count them as items (removing what the script writes again would cache them on
    every run). Every other cache file of a key that is not an item goes."""
    if ds.jsonl or not ds.media_dir or not ds.is_image:
        return set()
    try:
        return {item_key(name) for name in os.listdir(ds.media_dir) if name.endswith(PLUGIN_IMAGE_EXT)}
    except OSError:
        return set()


def tidy(found: Survey) -> list[str]:
    """Remove the files a survey found damaged, stale or orphaned (under the folder's exclusive lock)."""
    gone = []
    for name in sorted(found.remove):
        try:
            os.unlink(found.folder / name)
            gone.append(name)
        except FileNotFoundError:
            pass
    return gone


def clear(stage: str, folder: Path, is_image: bool) -> int:
    """Forget the stage's caches in ``folder`` (``--recache``): the marker first, then every file."""
    try:
        os.unlink(folder / MARKERS[stage])
    except FileNotFoundError:
        pass
    n = 0
    for names in stage_files(stage, folder, is_image).values():
        for name in names:
            os.unlink(folder / name)
            n += 1
    return n


def mark(found: Survey, ds: DatasetCfg, key: str | None) -> int:
    """After the stage succeeded: vouch for every item of the survey (taken before the script ran, so an
    input changed meanwhile is caught next time) that has its files now. Returns the items vouched for."""
    files = stage_files(found.stage, found.folder, ds.is_image)
    items = {}
    for k, inp in found.inputs.items():
        have = files.get(k, {})
        if have or (found.stage == "cache_latents" and not ds.is_image):  # a clip too short yields no crop
            items[k] = {"input": inp, "files": have}
    doc = {"version": MARKER_VERSION, "stage": found.stage, "key": key,
           "written": utc_stamp(), "items": items}
    atomic.write_text(found.folder / MARKERS[found.stage], json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return len(items)
