"""Which cache folder a dataset's cache files belong in, named by what those files depend on.

musubi-tuner keeps an item's latents and its text-encoder output in one ``cache_directory`` per dataset:
training globs that folder for latents and looks for each one's text file beside it, so the two cannot
live apart. A folder's key is therefore the union of both bases:

- latents: the dataset's identity, every dataset key that changes a latent (resolution, buckets, frame
  extraction and counts, fps: everything but batching and repetition), I2V/FLF2V image latents and the
  VAE file's identity;
- text: the dataset's identity, the caption extension, the T5 file's identity and ``fp8_t5``.

Training settings (rank, learning rate, epochs, optimizer, a sweep's variants) are in neither, so runs that
differ only there share a folder. The dataset's identity is which dataset this is, not what it holds: the
resolved path of its media folder (or JSONL file), so a retraining with new items keeps its folder and
caches only the new items; moving or copying the dataset gives it a new identity (and a fresh cache). A
model file's identity is its content, sampled: size, the first MiB (a safetensors header) and 4 KiB at 255
evenly spaced offsets, so a copied or moved file keeps it and a different file of the same name does not.
Text-only keys (``text_key``) let a new folder borrow text caches from a sibling with the same text basis.
See docs/architecture.md ("Caches").
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

STORE_IN_RUNS_DIR = ".cache"        # the default store: RUNS_DIR/.cache
MEDIA_KEYS = ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file")
NOT_IN_LATENT_KEY = ("cache_directory", "batch_size", "num_repeats", "caption_extension", *MEDIA_KEYS)
_HEAD = 1 << 20
_BLOCK = 4096
_BLOCKS = 255
_identities: dict[tuple, dict] = {}


def model_identity(path: os.PathLike | str | None) -> dict[str, Any] | None:
    """A model file's identity: its size and a digest of sampled content, whatever it is named and wherever
    it lies (None: no file given; a file not there yet is known by its path)."""
    if path is None:
        return None
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return {"path": real, "missing": True}
    memo = (real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if memo not in _identities:
        _identities[memo] = {"bytes": st.st_size, "sample": _sample_digest(real, st.st_size)}
    return dict(_identities[memo])


def _sample_digest(path: str, size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_HEAD))
        if size > _HEAD:
            span = size - _BLOCK
            for i in range(1, _BLOCKS + 1):
                fh.seek(_HEAD + (span - _HEAD) * i // _BLOCKS if span > _HEAD else span)
                digest.update(fh.read(_BLOCK))
    return digest.hexdigest()[:24]


def digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def media_identity(entry: Mapping[str, Any]) -> dict[str, str]:
    """Which dataset a ``[[datasets]]`` entry is: its kind and its media folder or JSONL file, resolved."""
    for key in MEDIA_KEYS:
        if entry.get(key):
            return {"kind": key.split("_")[0], "media": os.path.realpath(str(entry[key]))}
    raise ValueError("a [[datasets]] entry without image_directory, video_directory or a JSONL file")


def latent_basis(entry: Mapping[str, Any], general: Mapping[str, Any], *, vae, i2v: bool) -> dict[str, Any]:
    merged = {**general, **entry}
    settings = {k: v for k, v in sorted(merged.items()) if k not in NOT_IN_LATENT_KEY}
    return {**media_identity(entry), "settings": settings, "i2v": bool(i2v), "vae": model_identity(vae)}


def text_basis(entry: Mapping[str, Any], general: Mapping[str, Any], *, t5, fp8_t5: bool) -> dict[str, Any]:
    merged = {**general, **entry}
    return {**media_identity(entry), "caption_extension": merged.get("caption_extension", ".txt"),
            "t5": model_identity(t5), "fp8_t5": bool(fp8_t5)}


@dataclass(frozen=True)
class CacheFolder:
    """One dataset's cache folder in the store: where it is and what it depends on."""

    index: int                    # the [[datasets]] entry it belongs to
    path: Path
    key: str                      # digest of both bases: the folder's name ends with it
    text_key: str                 # digest of the text basis alone (folders that may share text caches)
    latent: Mapping[str, Any]
    text: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return self.latent["kind"]

    @property
    def media(self) -> str:
        return self.latent["media"]

    def document(self) -> dict[str, Any]:
        """The folder's key document (``.kohyawan-cache.json``) and its entry in plan.json's ``caches``."""
        return {"dataset": self.index, "kind": self.kind, "media": self.media, "cache_directory": str(self.path),
                "key": self.key, "text_key": self.text_key, "latent": dict(self.latent), "text": dict(self.text)}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> "CacheFolder":
        return cls(int(doc["dataset"]), Path(doc["cache_directory"]), doc["key"], doc["text_key"],
                   doc["latent"], doc["text"])


def folder_for(store: Path, index: int, label: str, entry: Mapping[str, Any], general: Mapping[str, Any], *,
               vae, t5, i2v: bool, fp8_t5: bool) -> CacheFolder:
    """The store folder of one ``[[datasets]]`` entry; ``label`` makes its name readable (``sarah-images``)."""
    latent = latent_basis(entry, general, vae=vae, i2v=i2v)
    text = text_basis(entry, general, t5=t5, fp8_t5=fp8_t5)
    key = digest({"latent": latent, "text": text})
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:48] or "data"
    return CacheFolder(index, Path(os.path.abspath(store)) / f"{safe}-{key}", key, digest(text), latent, text)
