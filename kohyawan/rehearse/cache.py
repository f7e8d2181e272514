"""Simulated ``wan_cache_latents.py`` and ``wan_cache_text_encoder_outputs.py``: real cache files, no model.

They follow musubi-tuner's shared caching code (``cache_latents.encode_datasets``,
``cache_text_encoder_outputs.process_text_encoder_batches`` and ``post_process_cache_files``):

- latents: every item's cache path counts as the dataset's; ``--skip_existing`` skips an item whose file
  exists (whole or not: only existence is asked); afterwards every ``*_wan.safetensors`` in the cache folder
  that is not one of the dataset's is removed (``Removed old cache file``), or kept with ``--keep_cache``;
- text: the folder's text caches are listed once, before encoding; ``--skip_existing`` skips an item whose
  file was in that list; an item written over an existing file first reads that file (musubi merges the old
  keys in), so a damaged one fails the script; afterwards listed files not in the dataset are removed (or
  kept with ``--keep_cache``).

Files are written in place, as musubi writes them, so a killed script leaves a partial file. Besides the
real console lines, each script ends with a ``REHEARSAL:`` summary line, and with
``KOHYAWAN_REHEARSE_CACHE_LOG`` set appends one JSON line per start, per item encoded and per end to that
file (tests and benchmarks count what was encoded). ``KOHYAWAN_REHEARSE_CACHE_KILL=N`` cuts the N-th
file this process writes in half and kills the process (SIGKILL), as a power cut or an OOM kill would.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time
from pathlib import Path

from kohyawan import wan
from kohyawan.cachestore.folder import whole
from kohyawan.rehearse import decode, env
from kohyawan.rehearse.args import parse
from kohyawan.files.safetensors import OutSpec
from kohyawan.files.stream import write_stream
from kohyawan.lora.io import read_metadata
from kohyawan.rehearse.standin import BANNER
from kohyawan.trainer.cachefiles import TEXT_SUFFIX, caption_path, item_key, items, load, sources


def _bar(n: int, start: float) -> str:
    elapsed = time.monotonic() - start
    rate = elapsed / n if n else 0.0
    clock = f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}"
    speed = f"{rate:.2f}s/it" if rate >= 1 or n == 0 else f"{(1 / rate if rate else 0):.2f}it/s"
    return f"\r{n}it [{clock}, {speed if n else '?it/s'}]"


class _Log:
    """What this process encoded, skipped and removed (the summary line and the optional JSON log)."""

    def __init__(self, script: str, config: str):
        self.script, self.config = script, config
        self.encoded = self.skipped = self.removed = 0
        self.kill_at = int(os.environ.get("KOHYAWAN_REHEARSE_CACHE_KILL", "0") or 0)
        self._write({"event": "start", "dataset_config": config})

    def _write(self, record: dict) -> None:
        path = os.environ.get("KOHYAWAN_REHEARSE_CACHE_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"script": self.script, "pid": os.getpid(), **record}) + "\n")

    def save(self, path: str, shapes: dict[str, tuple[int, ...]], metadata: dict) -> None:
        # zeros in bf16, written in place without hashes, as musubi's cache scripts write theirs
        specs = [OutSpec(name, "BF16", shape) for name, shape in shapes.items()]
        write_stream(path, specs, metadata, lambda spec: bytes(spec.nbytes), musubi_hashes=False, in_place=True)
        self.encoded += 1
        if self.encoded == self.kill_at:  # a write cut short: half the file, then a hard kill
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) // 2)
            self._write({"event": "killed", "file": path})
            os.kill(os.getpid(), signal.SIGKILL)
        self._write({"event": "encoded", "file": path})

    def remove(self, logger: str, path: str, keep: bool) -> None:
        if keep:
            print(f"INFO:{logger}:Keep cache file not in the dataset: {path}", file=sys.stderr, flush=True)
            return
        os.remove(path)
        self.removed += 1
        print(f"INFO:{logger}:Removed old cache file: {path}", file=sys.stderr, flush=True)

    def end(self) -> None:
        self._write({"event": "end", "encoded": self.encoded, "skipped": self.skipped, "removed": self.removed})
        print(f"REHEARSAL: {self.script}.py encoded {self.encoded} item(s), skipped {self.skipped} existing, "
              f"removed {self.removed} old cache file(s)", file=sys.stderr, flush=True)


def _start(script: str, logger: str, what: str):
    args = parse(script)
    print(BANNER, file=sys.stderr, flush=True)
    print(f"INFO:{logger}:Load dataset config from {args.dataset_config}", file=sys.stderr, flush=True)
    if not os.path.exists(args.dataset_config):
        print(f"FileNotFoundError: [Errno 2] No such file or directory: '{args.dataset_config}'", file=sys.stderr)
        return args, None
    model = args.vae if what == "latents" else args.t5
    if model and not os.path.exists(model):
        print(f"FileNotFoundError: [Errno 2] No such file or directory: '{model}'", file=sys.stderr, flush=True)
        return args, None
    return args, model


def main_latents() -> int:
    logger = "musubi_tuner.wan_cache_latents"
    args, model = _start("wan_cache_latents", logger, "latents")
    if model is None:
        return 1
    print(f"INFO:{logger}:Loading VAE model from {model}", file=sys.stderr, flush=True)
    log = _Log("wan_cache_latents", args.dataset_config)
    per_item, skip = env.cache_s(), env.cache_skip()
    for ds in load(args.dataset_config):
        os.makedirs(ds.cache_directory, exist_ok=True)
        print(f"INFO:musubi_tuner.cache_latents:Encoding dataset [{ds.index}]", file=sys.stderr, flush=True)
        todo = items(ds)
        dataset_paths = {os.path.normpath(i.latent_cache) for i in todo}
        # the real cacher loads every image and clip it encodes: a corrupt one stops it
        broken = decode.first_error(ds, [i for i in todo if not (args.skip_existing and os.path.exists(i.latent_cache))])
        if broken:
            return decode.fail(broken[1])
        start = time.monotonic()
        sys.stderr.write(_bar(0, start))
        for n, item in enumerate(todo, 1):
            if args.skip_existing and os.path.exists(item.latent_cache):
                log.skipped += 1
                continue
            if n == skip:
                continue
            time.sleep(per_item)
            w, h = item.size
            _, rows, cols = wan.TRAINING_VAE.stride
            shape = (wan.TRAINING_VAE.z_dim, wan.latent_frames(item.frames), max(1, h // rows), max(1, w // cols))
            meta = {"architecture": "wan", "width": str(w), "height": str(h), "format_version": "1.0.1"}
            if not ds.is_image:
                meta["frame_count"] = str(item.frames)
            log.save(item.latent_cache, {f"latents_{shape[1]}x{shape[2]}x{shape[3]}_bfloat16": shape}, meta)
            sys.stderr.write(_bar(n, start))
            sys.stderr.flush()
        sys.stderr.write("\n")
        for old in glob.glob(os.path.join(glob.escape(ds.cache_directory), "*_wan.safetensors")):
            if os.path.normpath(old) not in dataset_paths:
                log.remove("musubi_tuner.cache_latents", old, args.keep_cache)
    log.end()
    return 0


def main_text() -> int:
    logger = "musubi_tuner.wan_cache_text_encoder_outputs"
    args, model = _start("wan_cache_text_encoder_outputs", logger, "text")
    if model is None:
        return 1
    datasets = load(args.dataset_config)
    existing = [{os.path.normpath(p) for p in glob.glob(os.path.join(glob.escape(ds.cache_directory), f"*{TEXT_SUFFIX}"))}
                for ds in datasets]
    print(f"INFO:{logger}:Loading T5: {model}", file=sys.stderr, flush=True)
    print(f"INFO:{logger}:Encoding with T5", file=sys.stderr, flush=True)
    log = _Log("wan_cache_text_encoder_outputs", args.dataset_config)
    per_item = env.cache_s()
    for ds, before in zip(datasets, existing):
        os.makedirs(ds.cache_directory, exist_ok=True)
        print(f"INFO:musubi_tuner.cache_text_encoder_outputs:Encoding dataset [{ds.index}]", file=sys.stderr, flush=True)
        dataset_paths = set()
        start = time.monotonic()
        sys.stderr.write(_bar(0, start))
        for n, (media, caption) in enumerate(sources(ds), 1):
            path = os.path.join(ds.cache_directory, f"{item_key(media)}{TEXT_SUFFIX}")
            dataset_paths.add(os.path.normpath(path))
            if args.skip_existing and os.path.normpath(path) in before:
                log.skipped += 1
                continue
            if caption is None:
                print(f"\nFileNotFoundError: [Errno 2] No such file or directory: '{caption_path(media, ds)}'",
                      file=sys.stderr, flush=True)
                return 1
            if os.path.exists(path):  # musubi merges the existing file's other keys in: it must be readable
                if not whole(Path(path))[0]:
                    print("\nsafetensors_rust.SafetensorError: Error while deserializing header: "
                          "MetadataIncompleteBuffer", file=sys.stderr, flush=True)
                    return 1
                old = read_metadata(path)
                if old.get("caption1") != caption:
                    print(f"\nWARNING:musubi_tuner.dataset.cache_io:caption mismatch: existing={old.get('caption1')}, "
                          f"new={caption}, overwrite", file=sys.stderr, flush=True)
            time.sleep(per_item)
            tok = max(1, len(caption.split()))
            log.save(path, {"varlen_t5_bfloat16": (tok, wan.UMT5.dim)},
                     {"architecture": "wan", "caption1": caption, "format_version": "1.0.1"})
            sys.stderr.write(_bar(n, start))
            sys.stderr.flush()
        sys.stderr.write("\n")
        for old in sorted(before - dataset_paths):
            log.remove("musubi_tuner.cache_text_encoder_outputs", old, args.keep_cache)
    log.end()
    return 0
