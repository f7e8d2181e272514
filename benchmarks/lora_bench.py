"""LoRA tools against a plain safetensors load + save of the same file: time, ratio, peak anonymous memory.

Every operation runs in a fresh child process that imports torch, safetensors and the function it times
first, then reports its wall time and the high-water mark of its RssAnon (sampled from /proc/self/status
every 5 ms: the memory the process owns, without the page-cache pages of the files it maps). Inputs
are read once before every run, so each finds them in the page cache. The test
LoRA is every module of a WAN 2.2 14B expert at the given rank (fp32 rank 64: 1227 MB), written to a
temporary folder with ``kohyawan.lora.fabricate`` and deleted afterwards; a second one (another seed) is
the other input of the merge. Each operation runs ``--repeat`` times, each time right after its baseline, a
plain load + save of the same file (the merge's: a plain load of both inputs and a save of all their
tensors in one file); the table shows the median time, the median of the paired ratios and the highest
memory. Resize is also compared with the
exact SVD (float64 QR of both factors) on a sample of modules.

    PYTHONPATH=. python benchmarks/lora_bench.py [--rank 64] [--dtype fp32] [--repeat 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
op, a, b, out, extra = sys.argv[1:6]
peak = [0]
def sample():
    while True:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
import torch, safetensors.torch
from safetensors import safe_open
if op.startswith("convert"):
    from kohyawan.lora.convert import convert_file
elif op.startswith("resize"):
    from kohyawan.lora.resize import resize_file
elif op.startswith("merge"):
    from kohyawan.lora.merge import merge_files
elif op.startswith("export"):
    from kohyawan.registry.export import ExportRequest, export
elif op == "registry deploy":
    from kohyawan.registry.deploy import deploy
elif op == "sha256":
    from kohyawan.files.digest import sha256_file
elif op == "inspect":
    from kohyawan.lora.inspect import read_info
elif op == "effect":
    from kohyawan.lora.effect import measure_file
time.sleep(0.05)
t0 = time.perf_counter()
if op == "load+save":
    with safe_open(a, "pt") as f:
        meta = f.metadata()
    safetensors.torch.save_file(safetensors.torch.load_file(a), out, meta)
elif op == "load+save x2":
    sd = safetensors.torch.load_file(a)
    sd.update({"b." + k: v for k, v in safetensors.torch.load_file(b).items()})
    safetensors.torch.save_file(sd, out)
elif op == "convert --to comfy":
    convert_file(a, out, to="comfy")
elif op == "convert --dtype bf16":
    convert_file(a, out, to="musubi", dtype="bf16")
elif op.startswith("resize"):
    resize_file(a, out, rank=int(extra.split(",")[0]), device=extra.split(",")[1])
elif op == "merge A + B":
    merge_files([(a, 0.9), (b, 0.8)], out)
elif op.startswith("export"):
    export(out, ExportRequest(source=a, name="bench", kind="style", dtype="bf16" if "bf16" in op else None))
elif op == "registry deploy":
    deploy(a, "bench", "1", out)
elif op == "sha256":
    sha256_file(a)
elif op == "inspect":
    read_info(a)
elif op == "effect":
    measure_file(a)
wall = time.perf_counter() - t0
time.sleep(0.02)
print(json.dumps({"seconds": wall, "peak_anon_mb": peak[0] / 1024}))
"""

# operation -> (inputs, what its ratio is to); None: shown for information
OPS = {
    "import": ("a", None),  # the interpreter + torch + safetensors: the memory every row starts from
    "load+save": ("a", "load+save"),
    "load+save x2": ("ab", "load+save x2"),
    "sha256": ("a", None),
    "inspect": ("a", None),
    "effect": ("a", None),
    "convert --to comfy": ("a", "load+save"),
    "convert --dtype bf16": ("a", "load+save"),
    "resize": ("a", "load+save"),
    "merge A + B": ("ab", "load+save x2"),
    "export --dtype bf16": ("a", "load+save"),
    "export (same dtype)": ("a", "load+save"),
    "registry deploy": ("reg", "load+save"),
}


def child(op: str, a: Path, b: Path, out: Path, extra: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KOHYAWAN_USER": "bench"}
    done = subprocess.run([sys.executable, "-c", CHILD, op, str(a), str(b), str(out), extra], capture_output=True,
                          text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{op} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def clean(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def warm(*paths: Path) -> None:
    """Read the inputs once, so every run (baseline or not) finds them in the page cache."""
    for path in paths:
        for p in ([path] if path.is_file() else path.rglob("*.safetensors") if path.is_dir() else []):
            with open(p, "rb") as fh:
                while fh.read(16 << 20):
                    pass


def _inputs(op: str, files: dict) -> list[Path]:
    if op == "registry deploy":
        return [files["reg"]]
    return [files["a"], files["b"]] if OPS.get(op, ("a",))[0] == "ab" else [files["a"]]


def once(op: str, work: Path, files: dict, extra: str = "") -> dict:
    warm(*_inputs(op, files))
    if op == "registry deploy":
        out = work / "comfy"
        (out / "models" / "loras").mkdir(parents=True, exist_ok=True)
    else:
        out = work / ("reg" if op.startswith("export") else "out.safetensors")
    result = child(op, files["reg"] if op == "registry deploy" else files["a"], files["b"], out, extra)
    if not op.startswith("resize"):
        clean(out)
    return result


def measure(op: str, base: str | None, work: Path, files: dict, repeat: int, extra: str = "") -> dict:
    """``repeat`` runs of ``op``, each right after a run of its baseline: the ratio is the median of the
    pairs' ratios, so a machine whose load changes during the benchmark skews both sides alike."""
    runs, bases = [], []
    for _ in range(repeat):
        if base and base != op:
            bases.append(once(base, work, files))
        runs.append(once(op, work, files, extra))
    if not bases:
        bases = runs
    ratios = sorted(r["seconds"] / b["seconds"] for r, b in zip(runs, bases))
    return {"op": op, "base": base, "seconds": statistics.median(r["seconds"] for r in runs),
            "ratio": statistics.median(ratios) if base else None,
            "peak_anon_mb": max(r["peak_anon_mb"] for r in runs)}


def resize_accuracy(src: Path, out: Path, sample: int = 12) -> dict:
    """Our resize against the exact SVD (float64 QR of both factors) on a sample of modules: the largest
    difference in retained energy, and the largest ||ours - exact_k|| / ||update|| (both best rank-k)."""
    import torch
    from safetensors import safe_open

    from kohyawan.lora.modules import load_modules
    from kohyawan.lora.svd import reference_svd

    lm = load_modules(src)
    step = max(1, len(lm.modules) // sample)
    worst_energy = worst_diff = 0.0
    with safe_open(str(src), "pt") as fs, safe_open(str(out), "pt") as fo:
        for m in lm.modules[::step][:sample]:
            up, down = fs.get_tensor(m.up).double(), fs.get_tensor(m.down).double()
            scale = float(fs.get_tensor(m.alpha)) / m.rank
            nu, nd = fo.get_tensor(m.up).double(), fo.get_tensor(m.down).double()
            k = nd.shape[0]
            nscale = float(fo.get_tensor(m.alpha)) / k
            u, s, vh = reference_svd(scale * up, down)
            energy = float(s[:k].square().sum() / s.square().sum())
            # ||A_k - B||^2 = ||A_k||^2 + ||B||^2 - 2 <A_k, B>, from r x r products only
            a_u, a_v, b_u, b_v = u[:, :k] * s[:k], vh[:k], nscale * nu, nd
            inner = float(((a_u.T @ b_u) * (a_v @ b_v.T)).sum())
            b2 = float(((b_u.T @ b_u) * (b_v @ b_v.T)).sum())
            diff = max(float(s[:k].square().sum()) + b2 - 2 * inner, 0.0) ** 0.5 / float(s.square().sum()) ** 0.5
            kept = b2 / float(s.square().sum())
            worst_energy, worst_diff = max(worst_energy, abs(kept - energy)), max(worst_diff, diff)
    return {"modules": min(sample, len(lm.modules[::step])), "max_energy_difference": worst_energy,
            "max_relative_difference": worst_diff}


def prepare(work: Path, rank: int, dtype: str, task: str, ops: list[str]) -> tuple[dict, float]:
    """The inputs the chosen operations need: the LoRA, a second one for merges, a registry to deploy."""
    from kohyawan.lora.fabricate import write_lora

    t0 = time.perf_counter()
    meta = {"kohyawan.task": task}
    a = write_lora(work / "a.safetensors", task=task, rank=rank, dtype=dtype, metadata=meta)
    b = work / "b.safetensors"
    if any("b" in OPS[op][0] for op in ops):
        write_lora(b, task=task, rank=rank, dtype=dtype, metadata=meta, seed=1)
    made = time.perf_counter() - t0
    reg = work / "registry"
    if "registry deploy" in ops:
        child("export (same dtype)", a, b, reg)  # the version "registry deploy" copies
    return {"a": a, "b": b, "reg": reg}, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--to-rank", type=int, default=None, help="resize target (default: rank / 4)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--task", default="t2v-A14B")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="resize device(s), comma-separated: cpu,cuda")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of: " + ", ".join(OPS))
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    to_rank = args.to_rank or max(1, args.rank // 4)
    work = Path(tempfile.mkdtemp(prefix="lora-bench-", dir=args.dir))
    rows, accuracy = [], {}
    try:
        ops = args.ops.split(",")
        unknown = set(ops) - set(OPS)
        if unknown:
            raise SystemExit(f"unknown operations: {', '.join(sorted(unknown))}")
        files, made = prepare(work, args.rank, args.dtype, args.task, ops)
        size_mb = files["a"].stat().st_size / 1e6
        for op in ops:
            if op == "resize":
                for device in args.device.split(","):
                    name = f"resize {args.rank}->{to_rank} ({device})"
                    rows.append(measure(name, "load+save", work, files, args.repeat, f"{to_rank},{device}"))
                    accuracy[device] = resize_accuracy(files["a"], work / "out.safetensors")
                    clean(work / "out.safetensors")
            else:
                rows.append(measure(op, OPS[op][1], work, files, args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"task": args.task, "rank": args.rank, "dtype": args.dtype, "file_mb": round(size_mb, 1),
              "fabricate_seconds": round(made, 1), "repeat": args.repeat, "loadavg": os.getloadavg(),
              "cpus": os.cpu_count(), "results": rows, "resize_vs_exact_svd": accuracy}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.task} LoRA, rank {args.rank}, {args.dtype}: {size_mb:.0f} MB (inputs written in {made:.1f} s); "
          f"median of {args.repeat}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"| {'operation':<24} | {'seconds':>7} | {'ratio':>21} | {'peak RssAnon MB':>15} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 23}|{'-' * 17}|")
    for r in rows:
        ratio = f"{r['ratio']:.2f} x {r['base']}" if r["ratio"] is not None else "-"
        print(f"| {r['op']:<24} | {r['seconds']:>7.2f} | {ratio:>21} | {r['peak_anon_mb']:>15.0f} |")
    for device, acc in accuracy.items():
        print(f"resize ({device}) vs exact SVD on {acc['modules']} modules: retained energy differs by at most "
              f"{acc['max_energy_difference']:.1e}, the update by at most {acc['max_relative_difference']:.1e} "
              "of its norm")
    print("seconds exclude the imports (the 'import' row's RssAnon is the interpreter + torch); RssAnon excludes "
          "the mapped files' page-cache pages")


if __name__ == "__main__":
    main()
