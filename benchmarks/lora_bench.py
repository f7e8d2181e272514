"""Time and peak memory of lora convert/resize on a 14B LoRA, against a plain safetensors load + save.

Each measurement runs in a fresh child process that reports its own wall time and peak RSS
(``ru_maxrss``), so one operation's memory never hides another's. The test LoRA (every module of a
WAN 2.2 14B model at the given rank, fp32 by default: about 1.2 GB at rank 64) is written to a
temporary folder and deleted afterwards.

    PYTHONPATH=. python benchmarks/lora_bench.py [--rank 64] [--dtype fp32] [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, threading, time
op, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
peak_anon = [0]

def sample():
    # ru_maxrss also counts the pages of memory-mapped files (safetensors reads through mmap): those are
    # page cache the kernel can drop. RssAnon is the memory the process really owns.
    while True:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
import torch, safetensors.torch  # imported in every child so the figures compare like with like
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
if op == "import":
    pass
elif op == "load+save":
    sd, meta = safetensors.torch.load_file(src), None
    from safetensors import safe_open
    with safe_open(src, "pt") as f:
        meta = f.metadata()
    safetensors.torch.save_file(sd, dst, meta)
elif op == "convert-comfy":
    from kohyawan.lora.convert import convert_file
    convert_file(src, dst, to="comfy")
elif op == "convert-bf16":
    from kohyawan.lora.convert import convert_file
    convert_file(src, dst, to="musubi", dtype="bf16")
elif op.startswith("resize-"):
    from kohyawan.lora.resize import resize_file
    resize_file(src, dst, rank=int(op.split("-")[1]))
elif op == "sha256":
    from kohyawan.lora.io import sha256_file
    sha256_file(src)
elif op == "inspect":
    from kohyawan.lora.inspect import read_info
    read_info(src)
elif op == "effect":
    from kohyawan.lora.effect import measure_file
    measure_file(src)
wall = time.perf_counter() - t0
print(json.dumps({"op": op, "seconds": round(wall, 2), "import_seconds": round(t_import, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "peak_anon_mb": round(peak_anon[0] / 1024, 1)}))
"""

OPS = ("import", "load+save", "sha256", "inspect", "effect", "convert-comfy", "convert-bf16", "resize")


def measure(op: str, src: Path, dst: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, op, str(src), str(dst)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{op} failed:\n{out.stderr[-2000:]}")
    if dst.exists():
        dst.unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--task", default="t2v-A14B")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from kohyawan.lora.fabricate import write_lora

    work = Path(tempfile.mkdtemp(prefix="lora-bench-", dir=args.dir))
    try:
        src = work / "bench.safetensors"
        t0 = time.perf_counter()
        write_lora(src, task=args.task, rank=args.rank, dtype=args.dtype)
        made = time.perf_counter() - t0
        size_mb = src.stat().st_size / 1e6
        ops = [f"resize-{max(1, args.rank // 4)}" if op == "resize" else op for op in OPS]
        rows = [measure(op, src, work / "out.safetensors") for op in ops]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"task": args.task, "rank": args.rank, "dtype": args.dtype, "file_mb": round(size_mb, 1),
              "fabricate_seconds": round(made, 1), "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.task} LoRA, rank {args.rank}, {args.dtype}: {size_mb:.0f} MB (written in {made:.1f} s)")
    print(f"{'operation':<14} {'seconds':>8} {'peak RSS MB':>12} {'peak anon MB':>13}")
    for r in rows:
        print(f"{r['op']:<14} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.1f} {r['peak_anon_mb']:>13.1f}")
    print("seconds exclude the torch import; RSS includes it and the mmapped file pages, anon does not count "
          "file pages")


if __name__ == "__main__":
    main()
