"""Shared set-up for the runtime tests: a tiny dataset and a fast simulated trainer."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

FAST = {"KOHYAWAN_REHEARSE_STARTUP_S": "0", "KOHYAWAN_REHEARSE_STEP_S": "0.01", "KOHYAWAN_REHEARSE_CACHE_S": "0",
        "KOHYAWAN_REHEARSE_RANK": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def make_dataset(root: Path, n: int = 4) -> Path:
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (40 * i, 10, 10)).save(images / f"img {i}.png")
        (images / f"img {i}.txt").write_text(f"a photo of sks person, pose {i}")
    return root


def base_args(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kohyawan", "run", "--profile", "character", "--dataset", str(data),
            "--task", "t2v-1.3B", "--runs-dir", str(runs), "--name", name, "--rehearse", "--plain",
            "--interval", "1000", "--set", "max_train_epochs=5", "--set", "save_every_n_steps=5",
            "--set", "resolution=[64,64]", *extra]


def env(**extra: str) -> dict:
    e = dict(os.environ)
    e.update(FAST)
    e.update(extra)
    return e


def run_cli(args, timeout=120, **env_extra):
    return subprocess.run(args, env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


def ledger(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "run.json").read_text())


def wait_for(predicate, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def trainer_processes(marker: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if marker in cmd and ("wan_train_network" in cmd or "kohyawan.run.guard" in cmd):
            found.append(p)
    return found


def holder(script: str, *args: str) -> subprocess.Popen:
    """A real process running ``script`` with ``args``; it prints 'held' once it holds what it takes and keeps
    it until ``release``."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> int:
    """Tell a ``holder`` to let go; its exit code."""
    proc.stdin.write("\n")
    proc.stdin.flush()
    return proc.wait(timeout=30)
