"""Export cost on a real-size LoRA: one WAN 14B expert at rank 32 (400 modules, ~307 MB in bf16).

Compares, each in a fresh process (peak RSS from /proc VmHWM):
  baseline   copy the file + sha256 it (the least any publish must do)
  export     kohyawan export keeping the dtype (header rewrite, streamed copy, sha256, verify, index)
  convert    kohyawan export --dtype bf16 from an fp32 checkpoint (~614 MB; torch loads one file)
  promote    a lock-only registry change (index + notes rewrite)

Run:  PYTHONPATH=. /work/venv/bin/python benchmarks/registry_export.py [--rank 32] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import resource, sys, time, json, shutil, hashlib
t = time.perf_counter()
mode, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "baseline":
    shutil.copyfile(a, b)
    h = hashlib.sha256()
    with open(b, "rb") as f:
        while blk := f.read(1 << 20):
            h.update(blk)
else:
    from click.testing import CliRunner
    from kohyawan.cli import cli
    args = json.loads(b)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"s": time.perf_counter() - t, "maxrss_mb": hwm / 1024}))
"""


def child(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from registry_fakes import write_lora

    work = args.keep or Path(tempfile.mkdtemp(prefix="kohyawan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bf16 = work / "bf16.safetensors"
    fp32 = work / "fp32.safetensors"
    meta = {"kohyawan.task": "t2v-A14B"}
    if not bf16.exists():
        write_lora(bf16, task="t2v-A14B", rank=args.rank, dtype="bf16", metadata=meta)
    if not fp32.exists():
        write_lora(fp32, task="t2v-A14B", rank=args.rank, dtype="fp32", metadata=meta)
    reg = work / "reg"
    rows = {
        "baseline copy+sha256 (bf16)": child("baseline", str(bf16), str(work / "copy.safetensors")),
        "export keep dtype (bf16)": child("cli", "-", json.dumps(
            ["export", str(bf16), "--name", "bench", "--kind", "style", "--registry", str(reg)])),
        "export fp32 -> bf16": child("cli", "-", json.dumps(
            ["export", str(fp32), "--name", "bench", "--kind", "style", "--registry", str(reg), "--dtype", "bf16"])),
        "promote (lock only)": child("cli", "-", json.dumps(
            ["registry", "promote", "bench", "v1", "--registry", str(reg)])),
    }
    print(f"LoRA: t2v-A14B rank {args.rank}: bf16 {bf16.stat().st_size / 1e6:.0f} MB, fp32 {fp32.stat().st_size / 1e6:.0f} MB")
    for name, r in rows.items():
        print(f"{name:32s} {r['s']:7.2f} s   peak RSS {r['maxrss_mb']:7.0f} MB")
    if args.keep is None:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()
