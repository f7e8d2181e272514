"""Shared set-up for the ``kohyawan ui`` tests: real rehearsal runs, a real registry, a real server process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from runtime_helpers import base_args, env, make_dataset, run_cli, wait_for

KOHYAWAN = [sys.executable, "-m", "kohyawan"]


def finished_run_with_oom(root: Path, name: str = "oomy") -> Path:
    """A rehearsal that runs out of VRAM at the trainer's step 7 once, then succeeds on the next rung."""
    data = root / "data"
    if not data.exists():
        make_dataset(data)
    runs = root / "runs"
    state = root / f"{name}-faults.json"
    r = run_cli(base_args(data, runs, name), KOHYAWAN_REHEARSE_FAULTS="oom@7", KOHYAWAN_REHEARSE_FAULT_STATE=str(state))
    assert r.returncode == 0, r.stderr
    return runs / name


def start_run(root: Path, name: str, *extra: str, step_s: str = "0.15", **env_extra) -> subprocess.Popen:
    """A rehearsal in the background, slow enough to watch (``step_s`` seconds per step)."""
    data = root / "data"
    if not data.exists():
        make_dataset(data)
    return subprocess.Popen(base_args(data, root / "runs", name, *extra),
                            env=env(KOHYAWAN_REHEARSE_STEP_S=step_s, **env_extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def metrics_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return json.loads(lines[-1])["step"] if lines else 0


def cli(*args: str, **env_extra) -> subprocess.CompletedProcess:
    return run_cli([*KOHYAWAN, *args], **env_extra)


def export(run_dir: Path, registry: Path, *extra: str) -> None:
    r = cli("export", str(run_dir), "--name", "sarah", "--kind", "character", "--client", "demo",
            "--registry", str(registry), *extra)
    assert r.returncode == 0, r.stderr


class UiServer:
    """``kohyawan ui`` as a real process on a free port; ``url`` is what it printed (token included)."""

    def __init__(self, *args: str, **env_extra):
        self.proc = subprocess.Popen([*KOHYAWAN, "ui", "--port", "0", *args], env=env(**env_extra),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stderr.readline()
        found = re.search(r"on (http://\S+)", line)
        if not found:
            self.close()
            raise AssertionError(f"kohyawan ui did not start: {line}{self.proc.stderr.read()}")
        self.url = found.group(1)
        self.base = self.url.split("?")[0].rstrip("/")

    def close(self) -> None:
        stop_process(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate, timeout: float = 60.0):
    return wait_for(predicate, timeout=timeout, every=0.1)

