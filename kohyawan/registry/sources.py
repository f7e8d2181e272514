"""Where an export comes from: a kohyawan run folder, a plain musubi-tuner output folder, or one file.

A run folder has ``run.json`` (the runner's ledger: checkpoints with absolute steps, their ``stage``
train/train_high/train_low and ``final`` flag, the ``final`` outputs, total steps, expert, rehearsal) and
``plan.json`` (resolved settings as a ``values`` list of ``train.X`` / ``dataset.X``; steps.items). A plain musubi output folder has ``{name}-step{N:08d}.safetensors``,
``{name}-{E:06d}.safetensors`` and ``{name}.safetensors``; their steps come from musubi's own ``ss_steps``
metadata and the total from ``ss_max_train_steps``. Expert pairs (per-expert runs) are told apart by an
``expert`` field in run.json, else ``kohyawan.expert`` metadata, else ``high``/``low`` as a word in the
file name, but the name is trusted only when it yields a real pair (both a high and a low file): a lone
``sarah_low_light.safetensors`` is a style, not an expert. ``export --expert`` overrides all of this.

``choose`` is the guide's pick, pure: ``auto`` takes the checkpoint nearest 70 % of training among those
between 60 % and 80 % (a tie goes to the later one); when none falls there (or the total is unknown) it
takes the final file, else the last checkpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from kohyawan.dataset import inventory
from kohyawan.errors import BadInput
from kohyawan.lora.inspect import recorded_task
from kohyawan.registry import lora_check, lorafile

_STEP = re.compile(r"(?P<name>.+)-step(?P<step>\d{8})")
_EPOCH = re.compile(r"(?P<name>.+)-(?P<epoch>\d{6})")
_EXPERT_WORD = re.compile(r"(?:^|[_\-.])(high|low)(?:[_\-.]|$)")
# settings that are machine paths, not hyperparameters: they would make every version "differ"
_PATHISH = {"dit", "dit_high_noise", "vae", "t5", "clip", "output_dir", "output_name", "dataset_config",
            "logging_dir", "config_file", "resume", "sample_prompts", "network_weights", "base_weights",
            "image_directory", "video_directory", "cache_directory", "image_jsonl_file", "video_jsonl_file"}
_SS_HYPER = ("network_dim", "network_alpha", "network_module", "learning_rate", "max_train_steps", "optimizer",
             "lr_scheduler", "lr_warmup_steps", "seed", "mixed_precision", "fp8_base", "gradient_checkpointing",
             "gradient_accumulation_steps", "num_epochs", "timestep_sampling", "discrete_flow_shift",
             "network_dropout", "max_grad_norm")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int | None
    epoch: int | None = None
    attempt: int | None = None
    expert: str = "both"
    final: bool = False
    expert_by_name: bool = False   # expert guessed from the file name only (see _settle)


@dataclass
class Source:
    kind: str                      # "run" | "folder" | "file"
    origin: Path
    checkpoints: list[Checkpoint]  # finals included, flagged final=True
    total_steps: int | None = None
    run_id: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

    def experts(self) -> list[str]:
        return sorted({c.expert for c in self.checkpoints})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: not a JSON object")
    return data


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _expert(path: Path, meta: Mapping[str, str], default: str) -> tuple[str, bool]:
    """(expert, guessed from the name only)."""
    value = meta.get(lora_check.META_EXPERT)
    if value in ("both", "high", "low"):
        return value, False
    m = _EXPERT_WORD.search(path.stem.lower())
    return (m.group(1), True) if m else (default, False)


def _settle(cks: list[Checkpoint], default: str) -> list[Checkpoint]:
    """Drop name-only expert guesses unless they form a high/low pair."""
    named = {c.expert for c in cks if c.expert_by_name}
    if {"high", "low"} <= named:
        return cks
    return [replace(c, expert=default, expert_by_name=False) if c.expert_by_name else c for c in cks]


def resolve(arg: str, cwd: Path | None = None) -> Path:
    path = Path(arg).expanduser()
    if path.exists():
        return path
    cwd = cwd or Path.cwd()
    if "/" not in arg and (cwd / "runs" / arg).is_dir():
        return cwd / "runs" / arg
    raise BadInput(f"{arg}: no such run folder, output folder or file (also looked in {cwd / 'runs'})")


def load(path: Path) -> Source:
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise BadInput(f"{path}: not a .safetensors file")
        meta = lorafile.metadata_of(path)
        expert, _ = _expert(path, meta, "both")
        ck = Checkpoint(path.absolute(), _int(meta.get("ss_steps")), _int(meta.get("ss_epoch")),
                        expert=expert, final=True)
        return Source("file", path.absolute(), [ck], total_steps=_int(meta.get("ss_max_train_steps")),
                      run_id=meta.get(lora_check.META_RUN_ID))
    if (path / "run.json").is_file():
        return _load_run(path)
    return _load_folder(path)


_STAGE_EXPERT = {"train_high": "high", "train_low": "low"}


def _final_entries(final) -> list[dict]:
    """run.json ``final``: the runner writes ``{stage, path, step, ..., outputs: [one per train stage]}``;
    a bare path or a list of such objects is accepted too."""
    if isinstance(final, str):
        return [{"path": final}]
    if isinstance(final, dict):
        outs = final.get("outputs")
        return [o for o in outs if isinstance(o, dict)] if isinstance(outs, list) and outs else [final]
    if isinstance(final, list):
        return [f if isinstance(f, dict) else {"path": f} for f in final if f]
    return []


def _locate(folder: Path, path: Path) -> Path | None:
    """A ledger path as written (absolute, or relative to the folder or to where the run was started),
    else the same name under the run's checkpoints/ folder: a run folder moved or copied to another
    machine or mount keeps working."""
    for p in (path, folder / path, folder / "checkpoints" / path.name):
        if p.is_file():
            return p.absolute()
    return None


def _load_run(folder: Path) -> Source:
    run = _read_json(folder / "run.json")
    plan = _read_json(folder / "plan.json") if (folder / "plan.json").is_file() else {}
    run_expert = run.get("expert") or plan.get("expert")  # both | high | low | sequential
    default_expert = run_expert if run_expert in ("high", "low") else "both"
    entries: dict[str, dict] = {}
    for c in run.get("checkpoints") or []:
        if isinstance(c, dict) and c.get("path"):
            entries[str(c["path"])] = {**c, "final": bool(c.get("final"))}
    for f in _final_entries(run.get("final")):
        if f.get("path"):
            merged = {**f, **entries.get(str(f["path"]), {})}
            entries[str(f["path"])] = {**merged, "final": True}
    cks = []
    for c in entries.values():
        p = _locate(folder, Path(c["path"]))
        if p is None:
            continue  # pruned: only files that exist can be exported
        meta = lorafile.metadata_of(p)
        by_name = False
        if c.get("expert") in ("both", "high", "low"):
            expert = c["expert"]
        elif c.get("stage") in _STAGE_EXPERT:
            expert = _STAGE_EXPERT[c["stage"]]
        elif run_expert in ("both", "high", "low"):  # one output per stage: names cannot override it
            expert = run_expert
        else:
            expert, by_name = _expert(p, meta, default_expert)
        step = _int(c.get("step"))
        if step is None and c["final"]:
            step = _int(run.get("total_steps")) or _int(meta.get("ss_steps"))
        cks.append(Checkpoint(p, step, _int(c.get("epoch")), _int(c.get("attempt")), expert, c["final"], by_name))
    if not cks:
        raise BadInput(f"{folder}: run.json lists no checkpoint file that exists (the run saved nothing yet?)")
    return Source("run", folder.absolute(), _settle(cks, default_expert), total_steps=_int(run.get("total_steps")),
                  run_id=str(run.get("id") or folder.name), run=run, plan=plan)


def _load_folder(folder: Path) -> Source:
    if not folder.is_dir():
        raise BadInput(f"{folder}: not a folder or file")
    files = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))
    if not files:
        raise BadInput(f"{folder}: no .safetensors files here (and no run.json): nothing to export")
    cks, totals = [], []
    for p in files:
        meta = lorafile.metadata_of(p)
        m_step, m_epoch = _STEP.fullmatch(p.stem), _EPOCH.fullmatch(p.stem)
        step = _int(meta.get("ss_steps"))
        if step is None and m_step:
            step = int(m_step.group("step"))
        epoch = _int(meta.get("ss_epoch")) or (int(m_epoch.group("epoch")) if m_epoch else None)
        totals.append(_int(meta.get("ss_max_train_steps")))
        expert, by_name = _expert(p, meta, "both")
        cks.append(Checkpoint(p.absolute(), step, epoch, expert=expert, final=not (m_step or m_epoch),
                              expert_by_name=by_name))
    total = max((t for t in totals if t), default=None)
    return Source("folder", folder.absolute(), _settle(cks, "both"), total_steps=total,
                  run_id=lorafile.metadata_of(files[0]).get(lora_check.META_RUN_ID))


def choose(cks: Sequence[Checkpoint], how: str, total: int | None) -> tuple[Checkpoint, str]:
    """Pick one checkpoint of one expert: 'final', 'auto' or a step number. Returns (checkpoint, why)."""
    finals = [c for c in cks if c.final]
    steps = sorted({c.step for c in cks if c.step is not None})
    listed = ", ".join(map(str, steps)) or "none known"
    if len(finals) > 1:
        raise BadInput(f"several final files ({', '.join(c.path.name for c in finals)}): export one of them by path")
    if how == "final":
        if not finals:
            raise BadInput(f"no final checkpoint (the run did not finish?): choose --checkpoint STEP (steps: {listed})")
        return finals[0], "final"
    if how == "auto":
        return _choose_auto(cks, finals, total)
    return _choose_step(cks, how, listed)


def _choose_auto(cks: Sequence[Checkpoint], finals: list[Checkpoint], total: int | None) -> tuple[Checkpoint, str]:
    """The guide's pick (see the module docstring)."""
    if total:
        lo, hi, aim = 0.6 * total, 0.8 * total, 0.7 * total
        cands = [c for c in cks if c.step is not None and lo <= c.step <= hi]
        if cands:
            best = min(cands, key=lambda c: (abs(c.step - aim), -c.step))
            return best, f"auto: step {best.step} is nearest 70 % of {total} among {len(cands)} in 60-80 %"
    if finals:
        why = "no checkpoint between 60 and 80 %" if total else "total steps unknown"
        return finals[0], f"auto: {why}, took the final file"
    last = max(cks, key=lambda c: (c.step or -1))
    return last, "auto: no candidate in 60-80 % and no final file, took the last checkpoint"


def _choose_step(cks: Sequence[Checkpoint], how: str, listed: str) -> tuple[Checkpoint, str]:
    """The checkpoint at the step asked for (a final file there wins)."""
    step = _int(how)
    if step is None or str(how).strip() != str(step):
        raise BadInput(f"--checkpoint {how!r}: give a step number, 'final' or 'auto'")
    hits = [c for c in cks if c.step == step]
    if not hits:
        raise BadInput(f"no checkpoint at step {step} (steps: {listed})")
    return max(hits, key=lambda c: c.final), f"step {step} as asked"


def _plan_sections(plan: Mapping[str, Any]) -> tuple[dict, dict]:
    """(train, dataset) settings from plan.json: its ``values`` list of ``{key: "train.X", value}``, or
    plain ``train`` / ``dataset`` objects."""
    train, dataset = {}, {}
    values = plan.get("values")
    if isinstance(values, list):
        for item in values:
            key = str(item.get("key", "")) if isinstance(item, dict) else ""
            section, _, name = key.partition(".")
            if section == "train" and name:
                train[name] = item.get("value")
            elif section == "dataset" and name:
                dataset[name] = item.get("value")
    if not train and isinstance(plan.get("train"), dict):
        train = dict(plan["train"])
    if not dataset and isinstance(plan.get("dataset"), dict):
        dataset = dict(plan["dataset"])
    return train, dataset


def _epoch(iso: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _computed_hash(folder: Path, run: Mapping[str, Any]) -> tuple[str | None, str]:
    """The fingerprint of the dataset folder now, only if nothing in it changed after the run started."""
    found = inventory.fingerprint(folder)
    if found is None:
        return None, "unknown: the dataset folder is gone"
    digest, newest = found
    started = _epoch(run.get("created"))
    if started is None:
        return None, "unknown: the run does not say when it started"
    if newest > started + 1:  # whole-second timestamps in run.json
        return None, "unknown: the dataset folder changed after the run started"
    return digest, "computed at export (dataset folder unchanged since the run started)"


def settings(source: Source, meta: Mapping[str, str]) -> dict[str, Any]:
    """task, profile, hyperparameters, dataset facts from run.json/plan.json, else the file's metadata."""
    plan, run = source.plan, source.run
    train, ds_cfg = _plan_sections(plan)
    return {
        "task": _pick(run, plan, "task") or recorded_task(meta),
        "profile": _pick(run, plan, "profile") or meta.get(lora_check.META_PROFILE),
        "variant": _pick(run, plan, "variant"),
        "hyperparameters": _hyperparameters(train, meta),
        "dataset": _dataset_facts(run, plan, ds_cfg, meta),
    }


def _pick(run: Mapping[str, Any], plan: Mapping[str, Any], name: str) -> Any:
    """A value set in run.json, else in plan.json (empty strings count as unset)."""
    for where in (run, plan):
        if where.get(name) not in (None, ""):
            return where[name]
    return None


def _hyperparameters(train: Mapping[str, Any], meta: Mapping[str, str]) -> dict[str, Any]:
    """The plan's train settings without machine paths, else musubi's own ``ss_*`` metadata."""
    hyper = {k: v for k, v in train.items() if k not in _PATHISH and not (isinstance(v, str) and "/" in v)}
    if not hyper:
        hyper = {k: _typed(meta[f"ss_{k}"]) for k in _SS_HYPER if meta.get(f"ss_{k}") not in (None, "", "None")}
    return hyper


def _dataset_facts(run: Mapping[str, Any], plan: Mapping[str, Any], ds_cfg: Mapping[str, Any],
                   meta: Mapping[str, str]) -> dict[str, Any]:
    """Dataset settings, folder, hash (recorded, else computed if provably unchanged), size, rehearsal."""
    dataset = {k: v for k, v in ds_cfg.items() if k not in _PATHISH}
    folder = plan.get("dataset") if isinstance(plan.get("dataset"), str) else None
    if folder:
        dataset["path"] = folder
    steps = plan.get("steps") if isinstance(plan.get("steps"), dict) else {}
    dataset["hash"] = _pick(run, plan, "dataset_hash") or meta.get(lora_check.META_DATASET_HASH)
    if dataset["hash"] is None and folder:
        dataset["hash"], dataset["hash_source"] = _computed_hash(Path(folder), run)
    dataset["size"] = _int(_pick(run, plan, "dataset_size") or steps.get("items")
                           or meta.get(lora_check.META_DATASET_SIZE) or meta.get("ss_num_train_items"))
    rehearsal = _pick(run, plan, "rehearsal")
    if rehearsal is None and meta.get(lora_check.META_REHEARSAL) is not None:
        rehearsal = meta[lora_check.META_REHEARSAL].lower() == "true"
    dataset["rehearsal"] = bool(rehearsal) if rehearsal is not None else None
    return dataset


def _typed(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
