"""``kohyawan calibrate``: the real trainer measured on the user's own GPU, so the estimate learns it.

A calibration is a run folder under ``<runs>/calibrations/<id>/`` driven by the run's own machinery (the
run lock, caching stages, the supervisor, the tracker, the GPU sampler): a sample of the dataset's largest
items (``calibsample``) is cached once, then the trainer runs ``PROBE_STEPS`` optimizer steps at each
measured ladder position, one short attempt (one process) each: the position ``kohyawan run`` would start
at, one named rung (``--rung``), or every position (``--ladder``). Each attempt records what every run's
attempt records (NVML peak per GPU, the trainer's own allocator peaks, host RAM, s/step, or the OOM), so
``kohyawan.estimate.observations`` reads a calibration like a run, and the next ``estimate`` and
``run --start-rung auto`` on that GPU use it. The estimates from before the calibration are kept in
run.json (``calibration.probes``) to print against the measurements. See docs/architecture.md ("A run").
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from kohyawan.errors import BadInput
from kohyawan.run import calibsample, preflight, rungs, runsetup, startrung, steps
from kohyawan.run.ladder import Next
from kohyawan.run.ledger import Ledger
from kohyawan.run.runner import Run
from kohyawan.run.steps import Stop
from kohyawan.run.training import StageTrainer

FOLDER = "calibrations"
MODES = ("start", "rung", "ladder")


def positions(vram: Sequence[Any], mode: str, rung: str | None, start: Sequence[str] = ()) -> list[tuple[str, tuple]]:
    """(label, rungs in effect) of every position to measure, in ladder order (pure)."""
    names = [r.name for r in vram]
    if mode == "ladder":
        return [("base", ())] + [(name, tuple(names[:i + 1])) for i, name in enumerate(names)]
    if mode == "rung":
        if rung == "base":
            return [("base", ())]
        if rung not in names:
            raise BadInput(f"--rung {rung}: not a rung of this plan's ladder; one of: base, {', '.join(names)}")
        return [(rung, tuple(names[:names.index(rung) + 1]))]
    return [(start[-1] if start else "base", tuple(start))]


def require_gpu(opts, nvml=None) -> None:
    """A real calibration measures a GPU: the trainer must see one."""
    from kohyawan.doctor import nvml as nvml_mod

    seen = nvml_mod.probe_for_trainer(nvml if nvml is not None else nvml_mod.real_nvml(), opts.gpus, os.environ)
    if not seen.devices:
        why = "; ".join(seen.problems) or "NVML lists no GPU"
        raise BadInput(f"calibrate measures the trainer on a GPU, and it would see none ({why}); "
                       "--rehearse tries it with the simulated trainer")


def new_calibration(spec, request: dict, opts, *, mode: str = "start", rung: str | None = None,
                    nvml=None) -> "CalibrationRun":
    """Check everything, pick and link the sample, create the calibration folder; nothing runs yet."""
    spec = runsetup.trainer_ready(spec, opts)
    if not opts.rehearse:
        require_gpu(opts, nvml)
    preflight.captions(Path(spec.dataset_dir), spec.dataset.get("caption_extension", ".txt"))
    if mode == "rung":
        positions(rungs.vram_rungs(spec), mode, rung)   # a rung that is not on the ladder fails before anything
    cid = f"{spec.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    cdir = opts.runs_dir / FOLDER / cid
    while cdir.exists():
        cid += "x"
        cdir = opts.runs_dir / FOLDER / cid
    cdir.mkdir(parents=True)
    try:
        sample = calibsample.write_sample(spec, cdir)
        pspec = calibsample.probe_spec(spec, cdir / "sample")
        led = Ledger.create(cdir, run_id=cid, profile=spec.profile, task=spec.task,
                            total_steps=calibsample.PROBE_STEPS, variant=spec.variant, expert=spec.expert,
                            rehearsal=opts.rehearse, request=request, options=opts.to_document(),
                            calibration={"mode": mode, "rung": rung, "steps": calibsample.PROBE_STEPS,
                                         "sample": sample, "probes": []})
    except BaseException:
        shutil.rmtree(cdir, ignore_errors=True)   # bad input leaves nothing behind
        raise
    return CalibrationRun(led, pspec, opts, mode, rung)


class CalibrationRun(Run):
    """A ``Run`` whose training stage is a series of short probes instead of the attempt loop."""

    def __init__(self, ledger: Ledger, spec, opts, mode: str, rung: str | None):
        super().__init__(ledger, spec, opts)
        self.mode, self.rung = mode, rung
        self.trainer: StageTrainer | None = None

    def _stages(self) -> None:
        led = self.ledger
        plan = self.plan(self.base_spec)
        led.set(status="running")
        try:
            for st in plan.stages:
                if st.name.startswith("cache"):
                    self.cache_stage(st, force=self.opts.recache)
            self.trainer = trainer = StageTrainer(self, next(s.name for s in plan.stages if s.name.startswith("train")))
            trainer.prepare()
            steps.open_record(trainer.rec)
            probes = self._planned(trainer)
            for probe in probes:
                self._probe(trainer, probe)
            trainer.rec.update(status="done")
            led.set(status="succeeded", reason=None)
        except Stop as stop:
            led.set(status=stop.status, reason=stop.reason)
        except KeyboardInterrupt:
            led.set(status="stopped", reason="interrupted by the user")

    def _planned(self, trainer: StageTrainer) -> list[dict]:
        """The positions to measure, each with what the estimate says before this calibration."""
        start: list[str] = []
        if self.mode == "start":
            start = startrung.estimated_start(self.base_spec, trainer.vram, self.opts, self.ledger.data,
                                              self.view.say)
        probes, learnt = [], self.learnt()
        for label, names in positions(trainer.vram, self.mode, self.rung, start):
            est = self.estimate(trainer.spec_with(names), learnt)
            probes.append({"label": label, "rungs": list(names), "estimate": est})
        return probes

    def learnt(self) -> dict[str, Any]:
        """What the estimate rests on as it now stands: the runs folder's observations and the sample's media,
        read once for every position estimated."""
        from kohyawan.estimate import workload

        kwargs = startrung.estimate_kwargs(self.opts, self.ledger.data)
        if getattr(self.base_spec, "dataset_dir", None) is not None:
            kwargs["facts"] = workload.gather(self.base_spec)
        return kwargs

    def estimate(self, spec, learnt: dict[str, Any]) -> dict[str, Any]:
        """VRAM, host RAM and s/step the estimator predicts for ``spec`` on the GPU in use (``learnt``)."""
        from kohyawan.estimate.plan import estimate_spec

        data = self.ledger.data
        est = estimate_spec(spec, gpu=known_gpu(self.gpu_name), margin_gib=startrung.margin_of(spec),
                            vram_gib=(data.get("gpu") or {}).get("total_gib"), **learnt)
        return {"vram_gib": round(est.vram_gib, 2), "ram_gib": round(est.ram_gib, 2),
                "s_per_step": _r3(est.s_per_step),
                "corrections": list(est.corrections.notes)}

    def _probe(self, trainer: StageTrainer, probe: dict) -> None:
        names = tuple(probe["rungs"])
        self.view.say(f"calibrate: {probe['label']}: {calibsample.PROBE_STEPS} steps"
                      + (f" with {', '.join(names)}" if names else " at the profile's settings"))
        end = trainer.attempt(Next("restart", f"calibration probe at {probe['label']}", names,
                                   probe["label"] if names else None, 0))
        probe.update(attempt=end.n, outcome=end.outcome, reason=end.reason)
        self.ledger.data["calibration"]["probes"].append(probe)
        self._discard_outputs()
        self.ledger.save()
        if end.outcome == "interrupted":
            raise Stop("stopped", end.reason or "interrupted")

    def results(self) -> dict[str, Any]:
        """What was measured against what was estimated, per position, and what the estimate says now (the
        calibration is stored: the estimator already reads it). ``kohyawan calibrate --json`` prints this."""
        from kohyawan.estimate.observations import steady_rate, step_times

        data = self.ledger.data
        attempts = {a["n"]: a for a in data["attempts"]}
        times = step_times(self.dir)
        rows, learnt = [], self.learnt()     # now with this calibration's own measurements
        for probe in data["calibration"]["probes"]:
            a = attempts.get(probe["attempt"], {})
            alloc = a.get("allocator_peak_gb") or {}
            rows.append({**probe, "measured": {
                "vram_gib": a.get("peak_vram_gb"), "allocated_gib": alloc.get("allocated"),
                "reserved_gib": alloc.get("reserved"), "ram_gib": a.get("peak_ram_gb"),
                "s_per_step": _r3(steady_rate(times.get(probe["attempt"], []))), "per_gpu": a.get("peak_vram_by_gpu")},
                "next_estimate": self.estimate(self.trainer.spec_with(probe["rungs"]), learnt)})
        return {"version": 1, "id": data["id"], "path": str(self.dir), "status": data["status"],
                "reason": data.get("reason"), "rehearsal": bool(data.get("rehearsal")), "gpu": data.get("gpu"),
                "alloc_conf": data.get("alloc_conf"), "steps": data["calibration"]["steps"],
                "sample": data["calibration"]["sample"], "probes": rows}

    def _discard_outputs(self) -> None:
        """A 3-step LoRA is nobody's model: its files go, the ledger says so."""
        for folder in (self.dir / "output", self.dir / "checkpoints"):
            shutil.rmtree(folder, ignore_errors=True)
        for entry in self.ledger.data.get("checkpoints", []):
            entry["removed"] = True


def _r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def known_gpu(name: str | None):
    """The GPU table's entry for an NVML name (its throughput times the steps), or None."""
    if not name:
        return None
    from kohyawan.estimate.offers import find_gpu

    try:
        return find_gpu(name)
    except Exception:  # not in the table (a rehearsal's virtual GPU, a new card): no time estimate
        return None
