#!/usr/bin/env python3
"""Fake sbatch / squeue / sacct / scontrol for tests where no SLURM runs: installed under those names
(symlinks), they keep state in $FAKE_SLURM_STATE and print exactly what the real tools print for the
options kohyawan uses. Array tasks really run: each is the submitted script under bash with
SLURM_ARRAY_JOB_ID / SLURM_ARRAY_TASK_ID / SLURM_JOB_ID set, output to the --output pattern.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_STATE"])


def _expand(spec):
    out = []
    for part in spec.split("%")[0].split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def _write(path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def sbatch(args):
    opts = dict(re.findall(r"--(\w+)=(.*)", "\n".join(a for a in args if a.startswith("--"))))
    script = Path([a for a in args if not a.startswith("--")][-1])
    text = script.read_text()
    m = re.search(r"^#SBATCH --array=(\S+)", text, re.M)
    if not m:
        print("sbatch: error: this fake needs --array", file=sys.stderr)
        return 1
    STATE.mkdir(parents=True, exist_ok=True)
    counter = STATE / "next_id"
    job = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job + 1))
    fail = os.environ.get("FAKE_SLURM_FAIL_TASKS", "")       # "IDX:STATE" e.g. "1:NODE_FAIL", "0:TIMEOUT@2.5"
    forced = dict(item.split(":") for item in fail.split(",") if ":" in item)
    for idx in _expand(m.group(1)):
        out = opts["output"].replace("%A", str(job)).replace("%a", str(idx)).replace("%%", "%")
        _write(STATE / f"{job}_{idx}.json", {"state": "PENDING", "exit": "0:0"})
        subprocess.Popen([sys.executable, __file__, "_task", str(job), str(idx), str(script), out,
                          opts.get("chdir", "."), forced.get(str(idx), "")],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    print(f"{job};fakecluster" if os.environ.get("FAKE_SLURM_CLUSTER") else str(job))
    return 0


def task(job, idx, script, out, chdir, forced):
    path = STATE / f"{job}_{idx}.json"
    time.sleep(0.1)
    _write(path, {"state": "RUNNING", "exit": "0:0"})
    limit = None
    if forced.startswith("TIMEOUT@"):          # the time limit hits after N seconds: SIGTERM, as --signal=B:TERM
        limit, forced = float(forced.split("@")[1]), ""
    if forced:
        _write(path, {"state": forced, "exit": "0:0" if forced != "FAILED" else "1:0"})
        return 0
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": idx, "SLURM_JOB_ID": str(int(job) + int(idx) + 1)}
    with open(out, "ab") as fh:
        proc = subprocess.Popen(["bash", script], cwd=chdir, env=env, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL)
        try:
            code = proc.wait(timeout=limit)
            state = "COMPLETED" if code == 0 else "FAILED"
        except subprocess.TimeoutExpired:
            proc.terminate()
            code, state = proc.wait(), "TIMEOUT"
    _write(path, {"state": state, "exit": f"{code}:0" if code >= 0 else f"0:{-code}"})
    return 0


def _tasks(ids):
    for path in sorted(STATE.glob("*_*.json")):
        job, idx = path.stem.split("_")
        if job in ids:
            yield job, idx, json.loads(path.read_text())


def squeue(args):
    ids = args[args.index("-j") + 1].split(",")
    fmt = args[args.index("-o") + 1]
    assert fmt == "%i|%T" and "-h" in args and "-r" in args, args
    for job, idx, st in _tasks(ids):
        if st["state"] in ("PENDING", "RUNNING"):
            print(f"{job}_{idx}|{st['state']}")
    return 0


def sacct(args):
    if os.environ.get("FAKE_SLURM_NO_ACCOUNTING"):
        print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)
        return 1
    ids = args[args.index("-j") + 1].split(",")
    assert "--parsable2" in args and "--noheader" in args, args
    for job, idx, st in _tasks(ids):
        print(f"{job}_{idx}|{st['state']}|{st['exit']}")
        if st["state"] not in ("PENDING",):
            print(f"{job}_{idx}.batch|{st['state']}|{st['exit']}")
            print(f"{job}_{idx}.extern|COMPLETED|0:0")
    return 0


def scontrol(args):
    job = args[-1]
    for j, idx, st in _tasks([job]):
        print(f"JobId={int(j) + int(idx) + 1} ArrayJobId={j} ArrayTaskId={idx} JobName=x JobState={st['state']} "
              f"Reason=None ExitCode={st['exit']}")
    return 0


if __name__ == "__main__":
    name = Path(sys.argv[0]).name
    if sys.argv[1:2] == ["_task"]:
        sys.exit(task(*sys.argv[2:]))
    sys.exit({"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scontrol": scontrol}[name](sys.argv[1:]))
