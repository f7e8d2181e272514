"""Caching cost of a sweep and of a batch with a retraining, on the simulated trainer: wall time and how
many times each cache script was started.

Scenarios (every command a real `kohyawan` process of the checkout given with --repo, so the same script
measures main's code and this branch's):

- sweep: `kohyawan sweep` of 3 variants (conservative, standard, aggressive) of one dataset, one after another;
- batch: a 2-client manifest run once (both datasets new to the cache), then a retraining in a new batch
  folder with 3 new captioned images for one client (what `--dir retrain-2026-12` does next month).

Invocations are counted from the runs' console logs (`<stage>: running (` lines, which both versions
print when they start a cache script); with this branch's simulator, whose cache scripts log what they
encode (KOHYAWAN_REHEARSE_CACHE_LOG), the items encoded are counted too. Each cache item costs
--cache-s seconds in the simulation; the simulation does not load models, so on a GPU each avoided start
also saves loading the VAE (latents) or the 11 GB umT5 (text).

Usage:  python benchmarks/cache_bench.py [--repo CHECKOUT --python ITS_VENV/bin/python] [--images 12]
        [--cache-s 0.2] [--json]
(an editable install wins over PYTHONPATH, so another checkout is run with its own environment's python)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

STAGES = ("cache_latents", "cache_text_encoder")


def _dataset(root: Path, n: int, prefix: str = "img") -> Path:
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (20 * i % 255, 60, 90)).save(images / f"{prefix}{i:03d}.png")
        (images / f"{prefix}{i:03d}.txt").write_text(f"a photo of sks person, pose {i}")
    return root


def _kohyawan(python: str, args: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-m", "kohyawan", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=3600)
    return time.perf_counter() - t0, proc


def _starts(log_dir: Path) -> dict[str, int]:
    counts = dict.fromkeys(STAGES, 0)
    for log in log_dir.glob("*.log"):
        text = log.read_text(encoding="utf-8", errors="replace")
        for stage in STAGES:
            counts[stage] += len(re.findall(rf"^{stage}: running \(", text, re.M))
    return counts


def _encoded(cache_log: Path, since: int) -> tuple[dict[str, int], int]:
    if not cache_log.exists():
        return {}, since
    lines = cache_log.read_text().splitlines()
    counts = {"latents": 0, "text": 0}
    for line in lines[since:]:
        rec = json.loads(line)
        if rec["event"] == "encoded":
            counts["latents" if rec["script"] == "wan_cache_latents" else "text"] += 1
    return counts, len(lines)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def run(repo: Path, python: str, images: int, cache_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache_log = tmp / "cache-log.jsonl"
        env = {**os.environ, "PYTHONPATH": str(repo), "KOHYAWAN_REHEARSE_CACHE_S": str(cache_s),
               "KOHYAWAN_REHEARSE_STEP_S": "0.02", "KOHYAWAN_REHEARSE_STARTUP_S": "0.2", "NO_COLOR": "1",
               "KOHYAWAN_REHEARSE_CACHE_LOG": str(cache_log), "XDG_CONFIG_HOME": str(tmp / "config")}
        where = subprocess.run([python, "-c", "import kohyawan; print(kohyawan.__file__)"], env=env, cwd=tmp,
                               capture_output=True, text=True, check=True).stdout.strip()
        if not where.startswith(str(repo)):
            raise SystemExit(f"kohyawan was imported from {where}, not from {repo}")
        seen = 0
        out: dict = {"repo": str(repo), "images_per_dataset": images, "cache_s_per_item": cache_s}

        data = _dataset(tmp / "sweep-data", images)
        wall, proc = _kohyawan(python, ["sweep", "--profile", "character", "--dataset", str(data), "--task", "t2v-1.3B",
                                "--variants", "conservative,standard,aggressive", "--rehearse", "--runs-dir",
                                str(tmp / "runs"), "--name", "sw", "--set", "max_train_epochs=2",
                                "--set", "resolution=[64,64]"], env, tmp)
        _check(proc, "sweep")
        encoded, seen = _encoded(cache_log, seen)
        out["sweep"] = {"wall_s": round(wall, 2), "starts": _starts(tmp / "runs" / "sw" / "logs"), "encoded": encoded}

        for client in ("sarah", "tom"):
            _dataset(tmp / "data" / client, images)
        manifest = tmp / "clients.toml"
        manifest.write_text(textwrap.dedent("""
            [defaults]
            profile = "character"
            task = "t2v-1.3B"
            rehearse = true
            export = false
            overrides = { max_train_epochs = 2, resolution = [64, 64] }

            [[jobs]]
            client = "brand-x"
            name = "sarah"
            dataset = "data/sarah"

            [[jobs]]
            client = "brand-x"
            name = "tom"
            dataset = "data/tom"
            """))
        for phase, folder in (("batch", "first.batch"), ("retrain", "retrain.batch")):
            if phase == "retrain":
                _dataset(tmp / "data" / "sarah", 3, prefix="new")
            wall, proc = _kohyawan(python, ["batch", str(manifest), "--dir", str(tmp / folder)], env, tmp)
            _check(proc, phase)
            encoded, seen = _encoded(cache_log, seen)
            out[phase] = {"wall_s": round(wall, 2), "starts": _starts(tmp / folder / "logs"), "encoded": encoded}
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--python", default=sys.executable, help="the checkout's environment (default: this one)")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--cache-s", type=float, default=0.2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    doc = run(args.repo.resolve(), args.python, args.images, args.cache_s)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{doc['repo']}: {doc['images_per_dataset']} images per dataset, {doc['cache_s_per_item']} s per cached item")
    for phase, label in (("sweep", "sweep, 3 variants"), ("batch", "batch, 2 clients"),
                         ("retrain", "retrain batch, +3 images for one client")):
        r = doc[phase]
        enc = r["encoded"]
        items = f", items encoded: {enc['latents']} latents / {enc['text']} text" if enc else ""
        print(f"  {label:<40} wall {r['wall_s']:7.2f} s   cache script starts: latents {r['starts']['cache_latents']}, "
              f"text {r['starts']['cache_text_encoder']}{items}")


if __name__ == "__main__":
    main()
