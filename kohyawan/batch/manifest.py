"""The batch manifest: ``[defaults]``, ``[slurm]`` and one ``[[jobs]]`` entry per client character or style.

Everything is checked before anything starts: unknown keys (with a did-you-mean), wrong types, missing
datasets, duplicate names, names that would leave the registry folder, and every job's full plan
(profile, variant, overrides) resolved and validated exactly as ``kohyawan run`` will resolve it. All
problems are gathered and reported together, so one edit fixes a manifest.

Relative paths in the manifest are relative to the manifest's folder, so a manifest can be moved with its
datasets and submitted from anywhere.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kohyawan.files import toml
from kohyawan.errors import ConfigError, KohyawanError
from kohyawan.config.tomlfmt import toml_value
from kohyawan.registry.naming import KINDS, SLUG

# key -> accepted types. Shared keys may appear in [defaults] and in each job (the job wins).
_SHARED: dict[str, tuple[type, ...]] = {
    "profile": (str,), "variant": (str,), "task": (str,), "expert": (str,),
    "kind": (str,), "client": (str,), "export": (bool,), "checkpoint": (str, int), "dtype": (str,),
    "dit": (str,), "dit_high_noise": (str,), "vae": (str,), "t5": (str,),
    "overrides": (dict,), "env": (dict,), "max_attempts": (int,), "gpu_memory": (int, float),
}
DEFAULT_KEYS: dict[str, tuple[type, ...]] = {
    **_SHARED, "trainer": (str,), "python": (str,), "registry": (str,), "notify": (list, str),
    "rehearse": (bool,), "runs_dir": (str,), "cache_dir": (str,),
}
JOB_KEYS: dict[str, tuple[type, ...]] = {**_SHARED, "name": (str,), "dataset": (str,), "notes": (str,)}
SLURM_KEYS: dict[str, tuple[type, ...]] = {
    "partition": (str,), "gpus": (int,), "cpus": (int,), "mem": (str,), "time": (str,), "account": (str,),
    "qos": (str,), "max_parallel": (int,), "setup": (list, str), "python": (str,), "poll_seconds": (int, float),
    "sbatch_args": (list,),
}
TOP_KEYS = ("defaults", "slurm", "jobs")
_PATH_KEYS = ("dit", "dit_high_noise", "vae", "t5", "dataset", "trainer", "registry", "runs_dir", "cache_dir")


@dataclass(frozen=True)
class Job:
    index: int                     # position in the manifest: the SLURM array index too
    key: str                       # "client/name": unique in a batch
    client: str
    name: str
    kind: str
    dataset: Path
    profile: str
    variant: str | None
    task: str
    expert: str
    sets: tuple[str, ...]          # --set KEY=VALUE, TOML values
    models: Mapping[str, str]      # role -> absolute path, roles given only
    export: bool
    checkpoint: str
    dtype: str | None
    notes: str | None
    env: Mapping[str, str]
    max_attempts: int | None
    gpu_memory: float | None
    fingerprint: str = ""          # what defines the job; a finished job whose definition changed is refused
    run_base: str = ""             # run folder name, when not client__name (sweeps)

    @property
    def run_name(self) -> str:
        # Slugs contain no "_", so "__" keeps client and name apart unambiguously.
        return self.run_base or f"{self.client}__{self.name}"


@dataclass(frozen=True)
class Manifest:
    path: Path
    jobs: tuple[Job, ...]
    trainer: Path | None
    python: str | None
    registry: Path | None
    notify: tuple[str, ...]
    rehearse: bool
    runs_dir: Path | None
    slurm: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None

    def job(self, key: str) -> Job:
        return next(j for j in self.jobs if j.key == key)


class ManifestErrors(ConfigError):
    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        head = f"{path}: {len(problems)} problem(s): " if len(problems) > 1 else f"{path}: "
        super().__init__(head + "; ".join(problems))


def _hint(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(sorted(known))})"


def _check_table(table: Any, known: Mapping[str, tuple[type, ...]], where: str, problems: list[str]) -> dict:
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table")
        return {}
    good = {}
    for key, value in table.items():
        if key not in known:
            problems.append(f"{where}: unknown key '{key}'{_hint(key, known)}")
            continue
        types = known[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("table" if t is dict else "array" if t is list else t.__name__ for t in types)
            problems.append(f"{where}: '{key}' must be {names}, got {value!r}")
            continue
        good[key] = value
    return good


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _sets(overrides: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for key, value in overrides.items():
        try:
            out.append(f"{key}={toml_value(value)}")
        except (TypeError, ValueError):
            raise ConfigError(f"override {key}: {value!r} cannot be passed as a TOML value") from None
    return tuple(out)


def load(path: Path, *, check_plans: bool = True) -> Manifest:
    """Read and validate a manifest; raises ``ManifestErrors`` listing every problem found."""
    path = Path(path)
    doc = _read(path)
    base = path.resolve().parent
    problems: list[str] = []
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(f"unknown table '{key}'{_hint(key, TOP_KEYS)}")
    defaults = _check_table(doc.get("defaults", {}), DEFAULT_KEYS, "[defaults]", problems)
    slurm = _check_table(doc.get("slurm", {}), SLURM_KEYS, "[slurm]", problems)
    rehearse = bool(defaults.get("rehearse", False))
    jobs = _jobs(doc.get("jobs", []), defaults, base, rehearse, problems, check_plans)
    notify = defaults.get("notify", ())
    notify = (notify,) if isinstance(notify, str) else tuple(notify)
    if any(not isinstance(u, str) or not u.startswith(("http://", "https://")) for u in notify):
        problems.append("[defaults]: 'notify' must be http(s) URLs")
    _check_slurm(slurm, problems)
    trainer = _path(base, defaults["trainer"]) if "trainer" in defaults else None
    if trainer is not None and not rehearse and not trainer.is_dir():
        problems.append(f"[defaults]: trainer folder not found: {trainer}")
    if problems:
        raise ManifestErrors(path, problems)
    return Manifest(path=path.resolve(), jobs=tuple(jobs), trainer=trainer, python=defaults.get("python"),
                    registry=_path(base, defaults["registry"]) if "registry" in defaults else None,
                    notify=notify, rehearse=rehearse,
                    runs_dir=_path(base, defaults["runs_dir"]) if "runs_dir" in defaults else None,
                    slurm=slurm, cache_dir=_path(base, defaults["cache_dir"]) if "cache_dir" in defaults else None)


def _read(path: Path) -> dict:
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"manifest not found: {path}") from None
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _jobs(raw_jobs: Any, defaults: dict, base: Path, rehearse: bool, problems: list[str],
          check_plans: bool) -> list[Job]:
    """Every ``[[jobs]]`` entry that checks out; a client/name used twice is a problem, not a second job."""
    if not isinstance(raw_jobs, list) or not raw_jobs:
        problems.append("no [[jobs]]: add one [[jobs]] table per LoRA to train")
        return []
    jobs, seen = [], {}
    for i, raw in enumerate(raw_jobs):
        where = f"job {i + 1}" + (f" ({raw.get('name')})" if isinstance(raw, dict) and raw.get("name") else "")
        table = _check_table(raw, JOB_KEYS, where, problems)
        key = (table.get("client", defaults.get("client", "default")), table.get("name"))
        if key[1] is not None and key in seen:
            problems.append(f"{where}: duplicate name '{key[1]}' for client '{key[0]}' (also job {seen[key] + 1})")
            continue
        seen.setdefault(key, i)
        job = _job(i, table, defaults, base, where, rehearse, problems, check_plans)
        if job is not None:
            jobs.append(job)
    return jobs


def _job(i: int, table: dict, defaults: dict, base: Path, where: str, rehearse: bool, problems: list[str],
         check_plans: bool) -> Job | None:
    """One job from its table over ``[defaults]``; None (with the reasons in ``problems``) if it does not check."""
    merged = {**defaults, **table}
    merged["overrides"] = {**defaults.get("overrides", {}), **table.get("overrides", {})}
    merged["env"] = {**defaults.get("env", {}), **table.get("env", {})}
    before = len(problems)
    for key in ("name", "dataset"):
        if key not in table:
            problems.append(f"{where}: '{key}' is required")
    problems += [f"{where}: {p}" for p in _identity_problems(merged) + _setting_problems(merged, rehearse)]
    dataset = _path(base, table["dataset"]) if "dataset" in table else None
    if dataset is not None and not dataset.is_dir():
        problems.append(f"{where}: dataset folder not found: {dataset}")
    models = {role: str(_path(base, merged[role]).absolute()) for role in _MODEL_ROLES if role in merged}
    problems += [f"{where}: {role} file not found: {p}" for role, p in models.items() if not Path(p).is_file()]
    try:
        sets = _sets(merged["overrides"])
    except ConfigError as exc:
        problems.append(f"{where}: {exc}")
        sets = ()
    if len(problems) > before:
        return None
    job = _build(i, merged, dataset, models, sets)
    if check_plans:
        try:
            check_plan(job, rehearse)
        except KohyawanError as exc:
            problems.append(f"{where}: {exc}")
            return None
    return with_fingerprint(job)


_MODEL_ROLES = ("dit", "dit_high_noise", "vae", "t5")


def _identity_problems(merged: dict) -> list[str]:
    """Name, client and kind: what the LoRA will be called in the registry."""
    problems = []
    # Model names and client folders become registry paths: the registry's slug rule, so that nothing in a
    # manifest can name a path outside the registry ("../x", "a/b", absolute paths, dots, spaces).
    for what in ("name", "client"):
        value = merged.get(what, "" if what == "name" else "default")
        if value and not SLUG.fullmatch(value):
            problems.append(f"{what} {value!r} must be letters, digits and hyphens (it becomes a "
                            f"registry path; '/', '..', '_', spaces and dots are refused)")
    kind = _kind(merged)
    if merged.get("export", True) and kind not in KINDS:
        problems.append(f"kind {kind!r} must be one of {', '.join(KINDS)}{_hint(kind, KINDS)}")
    return problems


def _setting_problems(merged: dict, rehearse: bool) -> list[str]:
    """Values of the right type that are still unusable: env names, ranges, choices."""
    problems = []
    for key, value in merged["env"].items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not re.fullmatch(r"[A-Za-z_]\w*", key):
            problems.append(f"env {key!r} must be NAME = \"value\"")
    if "gpu_memory" in merged and not (rehearse and 1 <= merged["gpu_memory"] <= 4096):
        problems.append("gpu_memory is the rehearsal's virtual GPU size, 1-4096 GB, with rehearse = true")
    checkpoint = str(merged.get("checkpoint", "auto"))
    if checkpoint not in ("auto", "final") and not checkpoint.isdigit():
        problems.append(f"checkpoint must be 'auto', 'final' or a step number, got {checkpoint!r}")
    if merged.get("dtype") not in (None, "bf16", "fp16", "fp32"):
        problems.append(f"dtype must be bf16, fp16 or fp32, got {merged['dtype']!r}")
    if "max_attempts" in merged and not 1 <= merged["max_attempts"] <= 100:
        problems.append("max_attempts must be between 1 and 100")
    return problems


def _kind(merged: dict) -> str:
    return merged.get("kind", merged.get("profile", "character"))


def _build(i: int, merged: dict, dataset: Path, models: dict[str, str], sets: tuple[str, ...]) -> Job:
    client, name = merged.get("client", "default"), merged.get("name", "")
    return Job(index=i, key=f"{client}/{name}", client=client, name=name, kind=_kind(merged),
               dataset=dataset.absolute(), profile=merged.get("profile", "character"), variant=merged.get("variant"),
               task=merged.get("task", "t2v-A14B"), expert=merged.get("expert", "both"), sets=sets, models=models,
               export=bool(merged.get("export", True)), checkpoint=str(merged.get("checkpoint", "auto")),
               dtype=merged.get("dtype"), notes=merged.get("notes"),
               env={k: str(v) for k, v in merged["env"].items()}, max_attempts=merged.get("max_attempts"),
               gpu_memory=float(merged["gpu_memory"]) if "gpu_memory" in merged else None)


def check_plan(job: Job, rehearse: bool) -> None:
    """Resolve and validate the job's plan exactly as ``kohyawan run`` will (profile, variant, --set)."""
    from kohyawan.config import validate
    from kohyawan.commands.common import resolve_spec

    m = {role: Path(p) for role, p in job.models.items()}
    spec = resolve_spec(job.profile, job.dataset, job.task, job.expert, job.variant, m.get("dit"),
                        m.get("dit_high_noise"), m.get("vae"), m.get("t5"), job.sets)
    validate.check(spec, need_models=not rehearse)


def with_fingerprint(job: Job) -> Job:
    from dataclasses import asdict, replace

    doc = {k: v for k, v in asdict(job).items() if k not in ("index", "fingerprint", "notes")}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return replace(job, fingerprint=digest)


def _check_slurm(slurm: dict, problems: list[str]) -> None:
    for key in ("gpus", "cpus", "max_parallel"):
        if key in slurm and slurm[key] < (0 if key == "gpus" else 1):
            problems.append(f"[slurm]: '{key}' must be {'0 or more' if key == 'gpus' else '1 or more'}")
    if "time" in slurm and not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", slurm["time"]):
        problems.append(f"[slurm]: time {slurm['time']!r} is not a SLURM time (e.g. 24:00:00 or 2-00:00:00)")
    if "mem" in slurm and not re.fullmatch(r"\d+[KMGT]?", slurm["mem"]):
        problems.append(f"[slurm]: mem {slurm['mem']!r} is not a SLURM size (e.g. 64G)")
    for key in ("partition", "account", "qos"):
        if key in slurm and not re.fullmatch(r"[\w.,-]+", slurm[key]):
            problems.append(f"[slurm]: {key} {slurm[key]!r} has characters SLURM names do not use")
    for item in slurm.get("sbatch_args", []):
        if not isinstance(item, str) or not item.startswith("--") or "\n" in item:
            problems.append(f"[slurm]: sbatch_args items must be long options like '--constraint=a100', got {item!r}")
