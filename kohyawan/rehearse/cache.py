"""Simulated ``wan_cache_latents.py`` and ``wan_cache_text_encoder_outputs.py``: real cache files, no model."""

from __future__ import annotations

import glob
import os
import sys
import time

from kohyawan.files.safetensors import OutSpec
from kohyawan.files.stream import write_stream
from kohyawan.rehearse import BANNER, env
from kohyawan.rehearse.args import parse
from kohyawan.trainer.cachefiles import items, load


def _save_zeros(path: str, name: str, shape: tuple[int, ...]) -> None:
    """A one-tensor bf16 cache file of zeros, written in place like musubi's cache scripts write theirs."""
    write_stream(path, [OutSpec(name, "BF16", shape)], {}, lambda spec: bytes(spec.nbytes), musubi_hashes=False,
                 in_place=True)


def _bar(n: int, start: float) -> str:
    elapsed = time.monotonic() - start
    rate = elapsed / n if n else 0.0
    clock = f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}"
    speed = f"{rate:.2f}s/it" if rate >= 1 or n == 0 else f"{(1 / rate if rate else 0):.2f}it/s"
    return f"\r{n}it [{clock}, {speed if n else '?it/s'}]"


def _run(script: str, logger: str, what: str) -> int:
    args = parse(script)
    print(BANNER, file=sys.stderr, flush=True)
    print(f"INFO:{logger}:Load dataset config from {args.dataset_config}", file=sys.stderr, flush=True)
    if not os.path.exists(args.dataset_config):
        print(f"FileNotFoundError: [Errno 2] No such file or directory: '{args.dataset_config}'", file=sys.stderr)
        return 1
    model = args.vae if what == "latents" else args.t5
    if model and not os.path.exists(model):
        print(f"FileNotFoundError: [Errno 2] No such file or directory: '{model}'", file=sys.stderr, flush=True)
        return 1
    if what == "latents":
        print(f"INFO:{logger}:Loading VAE model from {model}", file=sys.stderr, flush=True)
    else:
        print(f"INFO:{logger}:Loading T5: {model}", file=sys.stderr, flush=True)
        print(f"INFO:{logger}:Encoding with T5", file=sys.stderr, flush=True)
    per_item = env.cache_s()
    for ds in load(args.dataset_config):
        os.makedirs(ds.cache_directory, exist_ok=True)
        if what == "latents":
            print(f"INFO:musubi_tuner.cache_latents:Encoding dataset [{ds.index}]", file=sys.stderr, flush=True)
        todo = items(ds)
        start = time.monotonic()
        sys.stderr.write(_bar(0, start))
        written = set()
        for n, item in enumerate(todo, 1):
            time.sleep(per_item)
            if what == "latents":
                w, h = item.size
                shape = (16, (item.frames - 1) // 4 + 1, max(1, h // 8), max(1, w // 8))
                name = f"latents_{shape[1]}x{shape[2]}x{shape[3]}_bfloat16"
                _save_zeros(item.latent_cache, name, shape)
                written.add(item.latent_cache)
            else:
                if item.caption is None:
                    if ds.is_image:  # musubi skips an image without a caption; training then never sees it
                        continue
                    print(f"\nFileNotFoundError: [Errno 2] No such file or directory: "
                          f"'{os.path.splitext(item.media)[0] + ds.caption_extension}'", file=sys.stderr, flush=True)
                    return 1
                if not args.skip_existing or not os.path.exists(item.te_cache):
                    tok = max(1, len(item.caption.split()))
                    _save_zeros(item.te_cache, "varlen_t5_bfloat16", (tok, 4096))
            sys.stderr.write(_bar(n, start))
            sys.stderr.flush()
        sys.stderr.write("\n")
        if what == "latents" and not args.keep_cache:
            for old in glob.glob(os.path.join(glob.escape(ds.cache_directory), "*_wan.safetensors")):
                if old not in written:
                    print(f"INFO:musubi_tuner.cache_latents:Removed old cache file: {old}", file=sys.stderr, flush=True)
                    os.remove(old)
    return 0


def main_latents() -> int:
    return _run("wan_cache_latents", "musubi_tuner.wan_cache_latents", "latents")


def main_text() -> int:
    return _run("wan_cache_text_encoder_outputs", "musubi_tuner.wan_cache_text_encoder_outputs", "text")
