"""Every LoRA checkpoint of a run, with what it is, how much it does and which ones to test first.

Works on a kohyawan run folder (``run.json`` lists checkpoints with absolute steps and attempts, and
``metrics.jsonl`` has the loss per absolute step) and on any folder musubi-tuner wrote by hand
(``{name}-step{step:08d}.safetensors``, ``{name}-{epoch:06d}.safetensors``, ``{name}.safetensors``; the
step and epoch come from the name or from the ``ss_steps``/``ss_epoch`` metadata). The guide tests the
checkpoints between 60 % and 80 % of training first: those are marked as candidates.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kohyawan.errors import BadInput
from kohyawan.lora.inspect import guess_expert, info_from_header
from kohyawan.lora.io import LoraFileError, read_header, sha256_file
from kohyawan.run.ledger import locate, read_metrics

CANDIDATE_WINDOW = (0.60, 0.80)
_STEP_NAME = re.compile(r"^(?P<name>.+)-step(?P<step>\d{8})$")
_EPOCH_NAME = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})$")
# loss change between consecutive checkpoints below this fraction counts as flat
FLAT_LOSS = 0.02


@dataclass
class CheckpointInfo:
    path: str
    name: str                       # output name the file belongs to
    step: int | None                # absolute step
    epoch: int | None
    attempt: int | None
    final: bool                     # the {name}.safetensors saved at the end
    bytes: int
    dtype: str | None
    rank: int | None
    alpha: float | None
    sha256: str
    expert: str | None
    task: str | None
    effect: dict | None = None      # see lora.effect.Effect.to_dict
    flags: list[str] = field(default_factory=list)
    candidate: bool = False
    loss: float | None = None       # mean loss over the steps since the previous checkpoint
    loss_trend: str | None = None   # "falling" | "flat" | "rising" against the previous checkpoint
    progress: float | None = None   # step / total steps

    def to_dict(self) -> dict:
        return asdict(self)


def list_checkpoints(run_or_dir: Path, *, effect: bool = True) -> list[CheckpointInfo]:
    root = Path(run_or_dir)
    if not root.is_dir():
        raise BadInput(f"{root}: not a folder (give a kohyawan run folder or a musubi-tuner output folder)")
    ledger = _read_json(root / "run.json")
    entries = _from_ledger(root, ledger) if ledger else _scan(root)
    if not entries:
        raise BadInput(f"{root}: no LoRA checkpoints found")
    described = [_describe(path, extra, effect) for path, extra in entries]
    infos = [ck for ck, _ in described]
    total = (ledger or {}).get("total_steps") or _total_from_metadata(infos, [t for _, t in described])
    _mark_candidates(infos, total)
    losses = _read_losses(root)
    if losses:
        _loss_trends(infos, losses)
    # per expert, by absolute step; a final file sorts after the numbered checkpoints
    return sorted(infos, key=lambda i: (i.expert or "", i.final, i.step or 0, i.epoch or 0, i.path))


def run_record(path: Path) -> dict | None:
    """What a run's ledger says of a LoRA file in its run folder (``checkpoints/`` or ``output/``): the
    run's id and folder, the checkpoint's absolute step and epoch (those ``kohyawan checkpoints`` lists), its
    attempt and stage; None for a file outside a run folder. The file's own ``ss_steps``/``ss_epoch`` count
    from its attempt's start."""
    path = Path(path)
    if not path.is_file():
        return None
    for run_dir in (path.absolute().parent.parent, path.absolute().parent):
        try:
            ledger = _read_json(run_dir / "run.json")
        except BadInput:
            continue
        for c in (ledger or {}).get("checkpoints", []):
            if any(c.get(k) and _same_file(locate(run_dir, c[k]), path) for k in ("path", "trainer_path")):
                return {"id": ledger.get("id"), "dir": str(run_dir), "step": c.get("step"), "epoch": c.get("epoch"),
                        "attempt": c.get("attempt"), "stage": c.get("stage"), "final": bool(c.get("final"))}
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: unreadable run ledger ({exc})") from None


def _from_ledger(root: Path, ledger: dict) -> list[tuple[Path, dict]]:
    found = []
    for c in ledger.get("checkpoints", []):
        path = locate(root, c["path"])
        found.append((path, {"step": c.get("step"), "epoch": c.get("epoch"), "attempt": c.get("attempt"),
                             "sha256": c.get("sha256")}))
    return found


def _scan(root: Path) -> list[tuple[Path, dict]]:
    # only the folder itself: "-state/" folders hold accelerate's model.safetensors, not LoRAs to test
    return [(p, {}) for p in sorted(root.glob("*.safetensors")) if p.is_file()]


def _describe(path: Path, extra: dict, with_effect: bool) -> tuple[CheckpointInfo, int | None]:
    """The checkpoint's facts, and the total steps its metadata says the attempt was planned for."""
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.stem
    name, step, epoch, final = stem, None, None, True
    if m := _STEP_NAME.match(stem):
        name, step, final = m["name"], int(m["step"]), False
    elif m := _EPOCH_NAME.match(stem):
        name, epoch, final = m["name"], int(m["epoch"]), False
    if not path.exists():
        return CheckpointInfo(str(path), name, extra.get("step", step), extra.get("epoch", epoch), extra.get("attempt"),
                              final, 0, None, None, None, "", guess_expert({}, path.name), None,
                              flags=["missing"]), None
    try:
        header = read_header(path)
        info = info_from_header(header)
    except LoraFileError as exc:
        return CheckpointInfo(str(path), name, extra.get("step", step), extra.get("epoch", epoch), extra.get("attempt"),
                              final, path.stat().st_size, None, None, None, sha256_file(path), None, None,
                              flags=[f"unreadable: {exc}"]), None
    meta = header.metadata
    step = extra.get("step") if extra.get("step") is not None else (step if step is not None else _int(meta.get("ss_steps")))
    epoch = extra.get("epoch") if extra.get("epoch") is not None else (epoch if epoch is not None else _int(meta.get("ss_epoch")))
    ck = CheckpointInfo(str(path), name, step, epoch, extra.get("attempt"), final, header.file_size, info.dtype,
                        info.rank, info.alpha, sha256_file(path), info.expert, info.task)
    if extra.get("sha256") and extra["sha256"] != ck.sha256:
        ck.flags.append("sha256 differs from run.json: the file changed or is corrupted")
    if info.size_ok is False:
        ck.flags.append(f"size does not match rank: {info.bytes / 1e6:.1f} MB, a full rank-{info.rank} {info.dtype} "
                        f"LoRA for {info.model} is {info.expected_bytes / 1e6:.1f} MB (partial or padded file)")
    if with_effect:
        from kohyawan.lora.effect import measure
        from kohyawan.lora.modules import modules_of

        try:
            eff = measure(modules_of(header))
        except LoraFileError as exc:
            ck.flags.append(f"effect not measured: {exc}")
        except ModuleNotFoundError as exc:  # torch is an optional extra: the listing does without it
            ck.flags.append(f"effect not measured: {exc.name} is not installed (pip install 'kohyawan[torch]')")
        else:
            ck.effect = eff.to_dict()
            if eff.negligible:
                detail = "update is zero" if eff.zero_modules == eff.modules else f"largest update RMS {eff.max_rms:.1e}"
                ck.flags.append(f"no visible effect ({detail})")
    return ck, _int(meta.get("ss_max_train_steps"))


def _int(text) -> int | None:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return None


def _total_from_metadata(infos: list[CheckpointInfo], planned: list[int | None]) -> int | None:
    totals = [t for t in planned if t]
    if totals:
        return max(totals)
    steps = [i.step for i in infos if i.step]
    return max(steps) if steps else None


def _mark_candidates(infos: list[CheckpointInfo], total: int | None) -> None:
    if not total:
        return
    lo, hi = CANDIDATE_WINDOW
    for i in infos:
        if i.step is not None:
            i.progress = round(i.step / total, 4)
            i.candidate = lo * total <= i.step <= hi * total and "missing" not in i.flags


def _read_losses(run_dir: Path) -> dict[int, float]:
    losses: dict[int, float] = {}
    for rec in read_metrics(run_dir):
        try:
            losses[int(rec["step"])] = float(rec["loss"])
        except (ValueError, KeyError, TypeError):
            continue  # a record without loss
    return losses


def _loss_trends(infos: list[CheckpointInfo], losses: dict[int, float]) -> None:
    for group in _by_name(infos).values():
        prev_step, prev_loss = 0, None
        for ck in sorted((i for i in group if i.step is not None and "missing" not in i.flags), key=lambda i: i.step):
            window = [v for s, v in losses.items() if prev_step < s <= ck.step]
            if window:
                ck.loss = round(sum(window) / len(window), 6)
                if prev_loss:
                    change = (ck.loss - prev_loss) / prev_loss
                    ck.loss_trend = "flat" if abs(change) < FLAT_LOSS else ("falling" if change < 0 else "rising")
                prev_loss = ck.loss
            prev_step = ck.step


def _by_name(infos: list[CheckpointInfo]) -> dict[str, list[CheckpointInfo]]:
    # per-expert runs share absolute steps: trends compare checkpoints of one expert only
    groups: dict[str, list[CheckpointInfo]] = {}
    for i in infos:
        groups.setdefault(i.expert or "", []).append(i)
    return groups
