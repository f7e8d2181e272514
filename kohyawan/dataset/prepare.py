"""``dataset prepare``: scan, probe in parallel, decide (pure), encode in parallel, write the layout."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Mapping

from kohyawan.dataset import captions, layout, plan, report, scan
from kohyawan.dataset import provenance as manifest
from kohyawan.dataset.ffmpeg import ChildDied
from kohyawan.dataset.progress import Progress
from kohyawan.dataset.settings import Settings, size_targets
from kohyawan.dataset.work import encode_job, probe_job
from kohyawan.errors import DatasetError, Interrupted, WorkFailed


def _check_paths(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise DatasetError(f"source folder {src} does not exist or is not a folder")
    if dest.exists() and not dest.is_dir():
        raise DatasetError(f"--out {dest} exists and is not a folder")
    s, d = src.resolve(), dest.resolve()
    if d == s or s in d.parents:
        raise DatasetError(f"--out {dest} is inside the source {src}; the source is never written to")
    if d in s.parents:
        raise DatasetError(f"the source {src} is inside --out {dest}")


class _Pool:
    """One process pool for both phases, started on first use (spawn: safe beside rich's refresh thread)."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.executor: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"))
        return self.executor

    def close(self, cancel: bool = False) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=not cancel, cancel_futures=cancel)
            self.executor = None


# A job whose ffmpeg child died of a signal runs once more. One retry absorbs a one-off kill (the OOM killer
# picking the biggest process while several encoders peak together, a stray kill); a second death of the same
# job says the cause persists, and looping would only hide it, so the command stops and says so.
RETRIES = 1


def _run_pool(pool: _Pool, tasks: list[tuple[str, Callable, tuple]], progress: Progress, phase: str) -> dict[str, Any]:
    """Run (label, fn, args) tasks on the pool's processes (inline for 1 job); label -> result. A job that
    returns {"died": why} is queued again, and fails the command (ChildDied) when it dies twice."""
    progress.phase(phase, len(tasks))
    results: dict[str, Any] = {}
    deaths: dict[str, int] = {}
    queue = list(tasks)

    def settle(task: tuple[str, Callable, tuple], result: Any) -> None:
        label = task[0]
        why = result.get("died") if isinstance(result, dict) else None
        if why is None:
            results[label] = result
            progress.finished(label, result.get("error", "") if isinstance(result, dict) else "")
            return
        deaths[label] = deaths.get(label, 0) + 1
        if deaths[label] > RETRIES:
            raise ChildDied(f"{why}, {deaths[label]} times; nothing was decided about {label}: run the same "
                            "command again to retry (if the system killed ffmpeg for memory, pass fewer --jobs)")
        progress.retried(label, why)
        queue.append(task)

    if pool.jobs <= 1 or len(tasks) <= 1:
        while queue:
            task = queue.pop(0)
            progress.started(task[0])
            settle(task, task[1](*task[2]))
        return results
    executor = pool.get()
    pending: dict[Future, tuple[str, Callable, tuple]] = {}
    while queue or pending:
        # keep exactly `jobs` tasks in flight so "running" on the progress bar is the truth
        while queue and len(pending) < pool.jobs:
            task = queue.pop(0)
            pending[executor.submit(task[1], *task[2])] = task
            progress.started(task[0])
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            settle(pending.pop(fut), fut.result())
    return results


SCRATCH = "scratch"  # DEST/.kohyawan/scratch: normalised frames handed from the probe to the encode pass


def _clean_partials(dest: Path) -> None:
    shutil.rmtree(dest / layout.STATE / SCRATCH, ignore_errors=True)
    (dest / layout.STATE / SCRATCH).mkdir(parents=True, exist_ok=True)
    for sub in (layout.IMAGES, layout.VIDEOS):
        folder = dest / sub
        if folder.is_dir():
            for path in folder.glob(layout.PARTIAL + "*"):
                path.unlink(missing_ok=True)


def prepare(src: Path, dest: Path, settings: Settings, *, jobs: int | None = None, profile: str | None = None,
            progress: Progress | None = None) -> dict:
    src, dest = Path(src), Path(dest)
    _check_paths(src, dest)
    jobs = max(1, jobs or os.cpu_count() or 1)
    progress = progress or Progress(enabled=False)
    sources, ignored = scan.scan(src)
    if not sources:  # bad input, refused before anything is written
        raise DatasetError(f"no images or videos in {src}" + (f" ({len(ignored)} other file(s) ignored)" if ignored
                                                               else "") + ": nothing to prepare")
    dest.mkdir(parents=True, exist_ok=True)
    with manifest.locked(dest):
        return _prepare_locked(src, dest, settings, jobs, profile, progress, sources, ignored)


def _prepare_locked(src, dest, settings, jobs, profile, progress, sources, ignored) -> dict:
    _clean_partials(dest)
    old = manifest.load(dest)["sources"]
    settings_fp = settings.fingerprint()
    entries: dict[str, dict] = {}
    to_probe = []
    for source in sources:
        fp = manifest.fingerprint(source.path, source.caption, settings_fp)
        prev = old.get(source.rel)
        entries[source.rel] = {"fingerprint": fp, "kind": source.kind}
        if prev and prev.get("fingerprint") == fp and "probe" in prev:
            entries[source.rel]["probe"] = prev["probe"]
        else:
            scratch = dest / layout.STATE / SCRATCH / (layout.safe_stem(source.rel) + ".yuv")
            to_probe.append((source.rel, probe_job, (str(source.path), source.kind, settings, str(scratch))))
    pool = _Pool(jobs)
    try:
        with progress:
            intermediates: dict[str, str] = {}
            for rel, result in _run_pool(pool, to_probe, progress, "probing").items():
                if result.get("intermediate"):
                    intermediates[rel] = result["intermediate"]
                result.pop("intermediate", None)  # scratch files never outlive this run
                entries[rel]["probe"] = result
            items, work = _decide(dest, settings, sources, entries, old)
            # x264 threads: all cores for one job; shared out when several encoders run at once
            threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
            tasks = [(rel, encode_job, (path, kind, outs, size, settings, threads, intermediates.pop(rel, None)))
                     for rel, path, kind, outs, size in work]
            failures = _run_pool(pool, tasks, progress, "encoding")
        pool.close()
    except KeyboardInterrupt:
        _abandon(dest, pool)
        raise Interrupted("interrupted: finished outputs are kept; partial ones are ignored and redone next run")
    except BrokenProcessPool:  # a worker process itself was killed (the OOM killer, kill -9)
        _abandon(dest, pool)
        raise WorkFailed("a dataset prepare worker process was killed; nothing was decided about the sources it "
                         "had not finished: run the same command again (with fewer --jobs if memory is short)") from None
    except WorkFailed:
        _abandon(dest, pool)
        raise
    by_rel = {item["source"]: item for item in items}
    for rel, result in failures.items():
        if result.get("error"):
            item = by_rel[rel]
            item.update(status="dropped", outputs=[], clips=[])
            item["reasons"] = ["unreadable"]
            item["notes"].append("unreadable: " + result["error"])
    shutil.rmtree(dest / layout.STATE / SCRATCH, ignore_errors=True)  # sources dropped after probing
    _write_captions_and_prune(dest, items, entries, old)
    return _finish(src, dest, settings, profile, items, entries, ignored)


def _abandon(dest: Path, pool: _Pool) -> None:
    """Stop early: the manifest stays as it was, so every source not finished is undecided and redone next run."""
    shutil.rmtree(dest / layout.STATE / SCRATCH, ignore_errors=True)
    pool.close(cancel=True)


def _decide(dest: Path, settings: Settings, sources, entries, old):
    """Judge every source (pure but for creating output folders): the report items, and the encode work
    (rel, path, kind, [(output, start, frames)], size) for outputs that cannot be reused."""
    captions_by_rel = {s.rel: captions.load(s.caption, settings.trigger, settings.caption_max_tokens)
                       for s in sources}
    decisions = {s.rel: _judge(s, entries[s.rel]["probe"], captions_by_rel[s.rel], settings) for s in sources}
    _drop_duplicates(sources, entries, decisions, settings)
    items, work = [], []
    for source in sources:
        entry = entries[source.rel]
        outs = _outputs(source, decisions[source.rel])
        entry["outputs"] = [o[0] for o in outs]
        entry["caption"] = captions_by_rel[source.rel].text
        size = plan.output_size(entry["probe"].get("width", 0), entry["probe"].get("height", 0), settings)
        if outs and not _reusable(dest, entry, old.get(source.rel, {})):
            (dest / layout.IMAGES if source.kind == "image" else dest / layout.VIDEOS).mkdir(parents=True, exist_ok=True)
            work.append((source.rel, str(source.path), source.kind,
                         [(str(dest / o), start, n) for o, start, n in outs], size))
        items.append(_item(source, decisions[source.rel], entry, outs, size))
    return items, work


def _judge(source, probe: dict, caption, settings: Settings) -> plan.Decision:
    """Keep or drop one source: decodable, large enough, captioned, then the quality checks."""
    decision = plan.Decision()
    if not probe.get("ok"):
        decision.drop("unreadable", probe.get("error") or "cannot decode")
    else:
        short = min(probe["width"], probe["height"])
        if short < settings.resolution:
            decision.drop("too_small", f"shorter side {short} px < {settings.resolution} px")
        if caption.reason:
            decision.drop(caption.reason)
        quality = plan.decide_image(probe, settings) if source.kind == "image" else plan.decide_video(probe, settings)
        if decision.status == "dropped":
            # keep the quality verdicts as notes only; the source is dropped already
            decision.notes += [n for n in quality.notes if not n.startswith("scene_cut")]
            decision.pieces = []
        else:
            decision = quality
        decision.notes += [n for n in probe.get("notes", [])]
    decision.notes += list(caption.notes)
    return decision


def _drop_duplicates(sources, entries, decisions: dict[str, plan.Decision], settings: Settings) -> None:
    """Of near-identical kept images, keep one."""
    kept_images = [{"rel": s.rel, "probe": entries[s.rel]["probe"]} for s in sources
                   if s.kind == "image" and decisions[s.rel].status == "kept"]
    for loser, winner in plan.find_duplicates(kept_images, settings.duplicate_hash_bits).items():
        decisions[loser].drop("duplicate", f"near-identical to {winner}")


def _outputs(source, decision: plan.Decision) -> list[tuple[str, int, int]]:
    """(output path relative to DEST, first frame, frames) for each file a kept source becomes."""
    if decision.status != "kept":
        return []
    stem = layout.safe_stem(source.rel)
    if source.kind == "image":
        return [(f"{layout.IMAGES}/{stem}.png", 0, 1)]
    return [(f"{layout.VIDEOS}/{stem}-f{p.start:05d}.mp4", p.start, p.frames) for p in decision.pieces]


def _reusable(dest: Path, entry: dict, prev: dict) -> bool:
    """The outputs of the previous run are exactly these, from the same inputs and settings, and intact."""
    return (prev.get("fingerprint") == entry["fingerprint"] and prev.get("outputs") == entry["outputs"]
            and manifest.outputs_intact(dest, prev))


def _item(source, decision: plan.Decision, entry: dict, outs, size) -> dict:
    """The report's record of one source."""
    probe = entry["probe"]
    return {"source": source.rel, "kind": source.kind, "status": decision.status,
            "reasons": decision.reasons, "notes": decision.notes, "outputs": entry["outputs"],
            "width": probe.get("width", 0), "height": probe.get("height", 0),
            "fps": probe.get("fps", 0.0), "frames": probe.get("frames", 0) if source.kind == "video" else 1,
            "duration": probe.get("duration", 0.0), "output_size": list(size) if outs else None,
            "clips": [{"output": o, "start": start, "frames": n} for o, start, n in outs
                      if source.kind == "video"]}


def _write_captions_and_prune(dest: Path, items, entries, old) -> None:
    wanted: set[str] = set()
    for item in items:
        entry = entries[item["source"]]
        entry["outputs"] = item["outputs"]
        for out in item["outputs"]:
            text_rel = out.rsplit(".", 1)[0] + ".txt"
            layout.write_if_changed(dest / text_rel, entry["caption"] + "\n")
            wanted.update({out, text_rel})
        entry["sizes"] = {o: (dest / o).stat().st_size for o in item["outputs"]}
    # remove what earlier runs wrote and this one no longer produces (never anything we did not write)
    for prev in old.values():
        for out in prev.get("outputs", []):
            for rel in (out, out.rsplit(".", 1)[0] + ".txt"):
                if rel not in wanted:
                    (dest / rel).unlink(missing_ok=True)


def _finish(src, dest, settings, profile, items, entries, ignored) -> dict:
    manifest.save(dest, {"version": 1, "settings": settings.fingerprint(), "sources": entries})
    doc = report.build(src, {**settings.as_dict(), "profile": profile}, items, size_targets(settings, profile), ignored)
    summary = doc["summary"]
    lengths = sorted(settings.frames)
    reso = [settings.resolution, settings.resolution]
    layout.write_dataset_toml(dest, resolution=reso, target_frames=lengths, enable_bucket=settings.keep_aspect,
                              frame_extraction="full",
                              images=summary["images"] > 0 or summary["clips"] == 0,
                              videos=summary["clips"] > 0 or summary["images"] == 0)
    layout.atomic_write(dest / layout.REPORT, report_json(doc))
    return doc


def report_json(doc: Mapping) -> str:
    import json
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
