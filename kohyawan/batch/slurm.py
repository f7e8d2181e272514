"""SLURM: render the job-array script, submit it with ``sbatch``, follow it with ``squeue``/``sacct``, and
merge each finished task into the batch queue (then export it from here, the submit host).

The array index of a job is its position in the manifest, so a task id (``<jobid>_<index>``) names its
job for good. Tasks write only their run folders (shared storage); the queue database stays with the
driver. Parsing is pure and follows the real tools' formats: ``sbatch --parsable`` prints
``jobid[;cluster]``; ``squeue -h -r -o %i|%T`` one ``123_4|RUNNING`` line per task;
``sacct --parsable2 --noheader --format=JobID,State,ExitCode`` lines such as ``123_4|COMPLETED|0:0``,
``123_4.batch|...`` (job steps, ignored) and ``123_[5-7]|PENDING|0:0`` (tasks not started yet). Without
SLURM accounting (``sacct`` fails) ``scontrol show job -o`` is asked instead, and last the run folder.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kohyawan.batch import jobs as jobs_mod, results
from kohyawan.batch.manifest import Job, Manifest
from kohyawan.errors import ToolMissing, WorkFailed
from kohyawan.files import jsonfile

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}
# Ended without the task finishing its work: the run can be resumed from its last saved state.
CUT_SHORT = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE"}


# --- rendering (pure) ---------------------------------------------------------------------------------
def array_spec(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    parts, run = [], []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def job_name(batch_name: str) -> str:
    return "kohyawan-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", batch_name).strip("-") or "batch")[:40]


def render_script(tasks: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], batch_name: str) -> str:
    """``tasks``: dicts with ``index``, ``key``, ``argv`` (list) and ``env`` (mapping). Values are
    shell-quoted here, so paths with spaces, quotes, ``$(...)`` and newlines stay literal."""
    from kohyawan.config.render import render_template

    setup = settings.get("setup", [])
    setup = [setup] if isinstance(setup, str) else list(setup)
    rendered = [{"index": t["index"], "key": _comment(t["key"]),
                 "command": " ".join(shlex.quote(a) for a in t["argv"]),
                 "env": [(k, shlex.quote(v)) for k, v in sorted(t["env"].items())]} for t in tasks]
    return render_template("slurm_array.sh.j2", batch_name=_comment(batch_name), job_name=job_name(batch_name),
                           array=array_spec([t["index"] for t in tasks]),
                           max_parallel=settings.get("max_parallel"), cpus=settings.get("cpus"),
                           mem=settings.get("mem"), time=settings.get("time"), partition=settings.get("partition"),
                           account=settings.get("account"), qos=settings.get("qos"), gpus=settings.get("gpus", 1),
                           sbatch_args=list(settings.get("sbatch_args", [])), setup=setup, tasks=rendered)


def _comment(text: str) -> str:
    return " ".join(str(text).split())


def sbatch_argv(script: Path, log_dir: Path, workdir: Path) -> list[str]:
    # Paths go on sbatch's command line, not in #SBATCH lines: no quoting exists there. "%" starts a
    # SLURM filename pattern, so a literal one is doubled.
    pattern = str(log_dir).replace("%", "%%") + "/slurm-%A_%a.out"
    return ["sbatch", "--parsable", f"--output={pattern}", f"--chdir={workdir}", str(script)]


# --- parsing (pure) -----------------------------------------------------------------------------------
def parse_sbatch(stdout: str) -> str:
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";")[0].strip()
    if not job_id.isdigit():
        raise WorkFailed(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return job_id


def parse_squeue(stdout: str) -> dict[str, str]:
    states = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and re.fullmatch(r"\d+_\d+", parts[0]):
            states[parts[0]] = parts[1].strip()
    return states


def parse_sacct(stdout: str) -> dict[str, tuple[str, int | None]]:
    out = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not re.fullmatch(r"\d+_\d+", parts[0]):
            continue  # job steps (123_4.batch), unstarted ranges (123_[5-7]), headers
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"   # "CANCELLED by 0"
        code = parts[2].split(":")[0]
        out[parts[0]] = (state, int(code) if code.isdigit() else None)
    return out


def parse_scontrol(stdout: str) -> dict[str, tuple[str, int | None]]:
    out = {}
    for line in stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        job, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if job and task and task.isdigit() and "JobState" in fields:
            code = fields.get("ExitCode", "").split(":")[0]
            out[f"{job}_{task}"] = (fields["JobState"], int(code) if code.isdigit() else None)
    return out


# --- talking to SLURM -----------------------------------------------------------------------------------
def _tool(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} not found: --slurm needs the SLURM client tools on PATH") from None
    except subprocess.TimeoutExpired:
        raise WorkFailed(f"{argv[0]} did not answer in 120 s") from None
    if check and proc.returncode != 0:
        raise WorkFailed(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc


def submit(script: Path, log_dir: Path, workdir: Path) -> str:
    return parse_sbatch(_tool(sbatch_argv(script, log_dir, workdir)).stdout)


def poll(job_ids: Sequence[str]) -> tuple[dict[str, str], dict[str, tuple[str, int | None]]]:
    """(active task states from squeue, final task states from sacct or scontrol)."""
    ids = ",".join(sorted(set(job_ids)))
    active = parse_squeue(_tool(["squeue", "-h", "-r", "-j", ids, "-o", "%i|%T"], check=False).stdout)
    proc = _tool(["sacct", "-j", ids, "--format=JobID,State,ExitCode", "--parsable2", "--noheader"], check=False)
    final = parse_sacct(proc.stdout) if proc.returncode == 0 else {}
    if proc.returncode != 0 or not final:
        for jid in set(job_ids):
            sc = _tool(["scontrol", "show", "job", "-o", jid], check=False)
            if sc.returncode == 0:
                final.update(parse_scontrol(sc.stdout))
    return active, final


# --- the driver ---------------------------------------------------------------------------------------
def node_launch(manifest: Manifest, launch: jobs_mod.Launch) -> jobs_mod.Launch:
    """How array tasks call kohyawan: ``[slurm] python`` on the nodes, else this interpreter (shared venv)."""
    from dataclasses import replace

    python = manifest.slurm.get("python") or sys.executable
    return replace(launch, kohyawan=launch.kohyawan or (python, "-m", "kohyawan"))


def drive(q, manifest: Manifest, launch: jobs_mod.Launch, *, say: Callable[[str], None] = lambda m: None,
          exporter=None, sleep: Callable[[float], None] = time.sleep) -> None:
    """Submit what is left, follow it to the end, merge and export. Interrupting stops the following
    only: the array keeps running, and the next ``kohyawan batch --slurm`` follows it again."""
    from kohyawan.batch.local import run_export

    exporter = exporter or run_export
    jobs = {j.key: j for j in manifest.jobs}
    here, launch = launch, node_launch(manifest, launch)   # exports run here, tasks on the nodes
    folder = q.folder
    (folder / "slurm").mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for row in q.rows("pending"):                   # trained earlier, export missing
        if row["key"] in jobs and row["run_status"] == "succeeded":
            _export(q, jobs[row["key"]], Path(row["run_dir"]), here, manifest, exporter, logs, say)
    tasks, now = [], time.time()
    for row in q.rows("pending"):
        job = jobs.get(row["key"])
        if job is None:
            continue
        run_dir = Path(row["run_dir"]) if row["run_dir"] else None
        resumable = run_dir is not None and (jsonfile.read_object(run_dir / "run.json") or {}).get("status") in ("running", "stopped")
        tries = row["tries"] if resumable else jobs_mod.fresh_try(job, launch.runs_dir, row["tries"])
        argv = jobs_mod.resume_argv(run_dir, launch) if resumable else jobs_mod.run_argv(job, launch, tries)
        run_dir = run_dir if resumable else launch.runs_dir / jobs_mod.run_name(job, tries)
        tasks.append({"index": job.index, "key": job.key, "argv": argv, "env": dict(job.env),
                      "row": row, "tries": tries, "run_dir": run_dir})
    if tasks:
        n = len(list((folder / "slurm").glob("submit-*.sh"))) + 1
        script = folder / "slurm" / f"submit-{n:03d}.sh"
        from kohyawan.files.atomic import write_text as atomic_write

        atomic_write(script, render_script(tasks, manifest.slurm, folder.name), mode=0o755)
        job_id = submit(script, folder / "slurm", Path.cwd())
        say(f"submitted {len(tasks)} task(s) as SLURM job {job_id} ({script})")
        for t in tasks:
            q.update(t["key"], state="running", slurm_job=f"{job_id}_{t['index']}", slurm_state="PENDING",
                     attempts=t["row"]["attempts"] + 1, tries=t["tries"], run_dir=str(t["run_dir"]),
                     run_id=t["run_dir"].name, started_at=now, ended_at=None, exit_code=None, reason=None)
            q.event(t["key"], "submit", {"slurm_job": f"{job_id}_{t['index']}"})
    follow(q, jobs, here, manifest, exporter, logs, say, sleep)


def follow(q, jobs, launch, manifest, exporter, logs, say, sleep) -> None:
    interval = float(manifest.slurm.get("poll_seconds", 15))
    while True:
        rows = [r for r in q.rows("running") if r["slurm_job"] and r["key"] in jobs]
        if not rows:
            return
        active, final = poll([r["slurm_job"].split("_")[0] for r in rows])
        for row in rows:
            task = row["slurm_job"]
            if task in active:
                if active[task] != row["slurm_state"]:
                    q.update(row["key"], slurm_state=active[task])
                    say(f"{row['key']}: {active[task]} ({task})")
                continue
            state, code = final.get(task, (None, None))
            if state is None or state in ACTIVE:
                continue   # between squeue and accounting: ask again next round
            _merge(q, row, jobs[row["key"]], state, code, launch, manifest, exporter, logs, say)
        sleep(interval)


def _merge(q, row, job: Job, state: str, code: int | None, launch, manifest, exporter, logs, say) -> None:
    run_dir = Path(row["run_dir"])
    info = results.summarize(run_dir)
    fields = {"slurm_state": state, "exit_code": code, "ended_at": time.time(), "run_status": info["status"]}
    q.event(row["key"], "end", {"slurm_job": row["slurm_job"], "state": state, "exit_code": code,
                                "status": info["status"]})
    if info["status"] == "succeeded":
        q.update(row["key"], **fields)
        say(f"{row['key']}: run succeeded ({row['slurm_job']} {state})")
        if job.export:
            _export(q, job, run_dir, launch, manifest, exporter, logs, say)
        else:
            q.update(row["key"], state="succeeded", export_state="skipped")
    elif state in CUT_SHORT and info["status"] in ("running", "stopped"):
        q.update(row["key"], state="pending", reason=f"SLURM {state}; resumes on the next 'kohyawan batch --slurm'",
                 **fields)
        say(f"{row['key']}: cut short by SLURM ({state}); it resumes on the next submission")
    else:
        reason = info.get("reason") or f"SLURM {state}, exit code {code}" + \
            ("" if info["status"] else f"; no run.json (see {q.folder / 'slurm'})")
        q.update(row["key"], state="failed", reason=reason, **fields)
        say(f"FAILED {row['key']}: {reason}")


def _export(q, job, run_dir, launch, manifest, exporter, logs, say) -> None:
    q.update(job.key, export_state="running")
    result = exporter(job, run_dir, launch, manifest.registry, None, logs)
    if result.get("ok"):
        q.update(job.key, state="succeeded", export_state="done", exported_version=result.get("version"),
                 export_detail=json.dumps(result, default=str))
        say(f"exported {job.key} as v{result.get('version')}")
    else:
        q.update(job.key, state="failed", export_state="failed", reason=f"export: {result.get('error')}",
                 export_detail=json.dumps(result, default=str))
        say(f"FAILED export of {job.key}: {result.get('error')}")
