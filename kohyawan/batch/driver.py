"""``kohyawan batch``: manifest -> queue -> local scheduler or SLURM -> batch.json.

The manifest is validated completely before the queue is touched; the queue then says what is left.
Re-running the same command continues: finished jobs are skipped, interrupted ones resumed, failed ones
left alone unless ``retry_failed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kohyawan.batch import jobs as jobs_mod, manifest as manifest_mod, report
from kohyawan.batch import allocate as gpus_mod
from kohyawan.batch.queue import BatchLock, Queue, DB_NAME
from kohyawan.errors import BadInput


@dataclass(frozen=True)
class BatchOptions:
    manifest: Path
    folder: Path | None = None
    gpus: str | None = None
    slurm: bool = False
    dry_run: bool = False
    retry_failed: bool = False
    kohyawan: tuple[str, ...] = ()       # how children call kohyawan (tests, SLURM nodes)


def default_folder(manifest: Path) -> Path:
    manifest = Path(manifest).resolve()
    return manifest.parent / f"{manifest.stem}.batch"


def runs_dir(m: manifest_mod.Manifest, folder: Path) -> Path:
    return m.runs_dir or (folder / "runs")


def _action(row, retry_failed: bool) -> str:
    if row is None:
        return "run"
    state = row["state"]
    if state == "succeeded":
        return "done"
    if state == "failed":
        if not retry_failed:
            return "skip (failed; --retry-failed retries it)"
        return "export again" if row["run_status"] == "succeeded" else "run again"
    if row["run_status"] == "succeeded":
        return "export"
    if row["run_dir"] and Path(row["run_dir"], "run.json").is_file():
        return "resume" if state == "pending" else "running"
    return "run"


def plan(opts: BatchOptions) -> dict[str, Any]:
    """What a batch run would do, without starting or writing anything (``--dry-run``)."""
    m = manifest_mod.load(opts.manifest)
    folder = Path(opts.folder or default_folder(opts.manifest)).absolute()
    slots = gpus_mod.parse_gpus(opts.gpus)
    rows = {}
    if (folder / DB_NAME).is_file():
        q = Queue(folder, readonly=True)
        rows = {r["key"]: r for r in q.rows()}
        q.close()
    launch = jobs_mod.Launch.from_manifest(m, runs_dir(m, folder), opts.kohyawan)
    out = []
    for job in m.jobs:
        row = rows.get(job.key)
        action = _action(row, opts.retry_failed)
        tries = jobs_mod.fresh_try(job, launch.runs_dir, row["tries"] if row else 0)
        argv = jobs_mod.run_argv(job, launch, tries) if action in ("run", "run again") else \
            jobs_mod.resume_argv(Path(row["run_dir"]), launch) if action == "resume" else None
        out.append({"key": job.key, "action": action, "dataset": str(job.dataset), "profile": job.profile,
                    "variant": job.variant, "task": job.task, "export": job.export, "argv": argv})
    script = None
    if opts.slurm:
        from kohyawan.batch import slurm

        node = slurm.node_launch(m, launch)
        tasks = []
        for job, entry in zip(m.jobs, out):
            row = rows.get(job.key)
            if entry["action"] in ("run", "run again"):
                argv = jobs_mod.run_argv(job, node, jobs_mod.fresh_try(job, launch.runs_dir, row["tries"] if row else 0))
            elif entry["action"] == "resume":
                argv = jobs_mod.resume_argv(Path(row["run_dir"]), node)
            else:
                continue
            entry["argv"] = argv
            tasks.append({"index": job.index, "key": job.key, "argv": argv, "env": dict(job.env)})
        script = slurm.render_script(tasks, m.slurm, folder.name) if tasks else None
    return {"version": 1, "manifest": str(m.path), "dir": str(folder), "rehearsal": m.rehearse,
            "slots": [s for s in slots if s] or None, "runs_dir": str(launch.runs_dir),
            "registry": str(m.registry) if m.registry else None, "slurm": opts.slurm, "slurm_script": script,
            "jobs": out}


def run(opts: BatchOptions, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run (or continue) a batch to the end; returns the batch.json document."""
    from kohyawan.batch.local import Scheduler

    m = manifest_mod.load(opts.manifest)
    folder = Path(opts.folder or default_folder(opts.manifest)).absolute()
    slots = gpus_mod.parse_gpus(opts.gpus)
    with BatchLock(folder):
        q = Queue(folder)
        try:
            q.sync(m.jobs)
            _check_modes(q, opts.slurm)
            q.set_meta(manifest=str(m.path), jobs=[j.key for j in m.jobs], rehearse=m.rehearse,
                       runs_dir=str(runs_dir(m, folder)),
                       registry=str(m.registry) if m.registry else None, slurm=opts.slurm)
            if opts.retry_failed:
                again = q.retry_failed()
                if again:
                    say(f"retrying {len(again)} failed job(s): {', '.join(again)}")
            launch = jobs_mod.Launch.from_manifest(m, runs_dir(m, folder), opts.kohyawan)
            if opts.slurm:
                from kohyawan.batch import slurm

                try:
                    slurm.drive(q, m, launch, say=say)
                except KeyboardInterrupt:
                    # Only the following stops; the array runs on. batch.json says where things stand.
                    report.write(q)
                    raise
            else:
                Scheduler(q, list(m.jobs), launch, slots, registry=m.registry, say=say).run()
            return report.write(q)
        finally:
            q.close()


def status(folder: Path) -> dict[str, Any]:
    q = Queue(Path(folder), readonly=True)
    try:
        return report.document(q)
    finally:
        q.close()


def interrupted(doc: dict[str, Any]) -> bool:
    return any(j["state"] in ("pending", "running") for j in doc["jobs"] if j["in_manifest"])


def _check_modes(q: Queue, slurm: bool) -> None:
    """A batch folder is driven locally or through SLURM; never both at once for the same job."""
    for row in q.rows("running"):
        if row["slurm_job"] and not slurm:
            raise BadInput(f"job {row['key']} is SLURM task {row['slurm_job']}, still in flight; follow the batch "
                           f"with 'kohyawan batch ... --slurm' (or cancel it with scancel first)")
        if not row["slurm_job"] and slurm:
            from kohyawan.batch.local import _same_process

            if row["pid"] and _same_process(row["pid"], row["pid_started"]):
                raise BadInput(f"job {row['key']} is running locally (pid {row['pid']}); let it finish with "
                               f"'kohyawan batch' before switching this folder to --slurm")
            q.update(row["key"], state="pending", pid=None, reason="interrupted (driver died)")
