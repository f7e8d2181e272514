"""musubi-tuner's console grammar -> events, and failure classification from a log tail (pure).

Learned from the real trainer's console output: stdout carries ``accelerator.print`` lines,
logging (``LEVEL:logger:message``) and tqdm go to stderr, tqdm redraws with ``\\r``. A bar redraw is
often glued to the next logging line (``...?it/s]INFO:musubi_tuner...``), so one segment can hold two
things; ``parse_line`` returns every event it finds. Every bar step is drawn twice (``update`` then
``set_postfix``): the last draw of step n carries the average loss after step n. Design:
docs/architecture.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

OUTCOMES = ("succeeded", "oom_vram", "oom_ram", "stall", "nan", "loss_spike", "crashed", "interrupted")


@dataclass(frozen=True)
class Event:
    kind: str  # startup | progress | cache_progress | epoch | checkpoint | state | state_saved | removed |
    # model_saved | resumed | sample | error | stage
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    s_per_it: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    path: str | None = None
    key: str | None = None
    value: int | None = None
    text: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


_BAR = re.compile(
    r"steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([0-9:]+)<([0-9:?]+),\s*([0-9.?]+)(s/it|it/s)(?:,\s*([^\]]*))?\]"
)
_CACHE_BAR = re.compile(r"^(\d+)it \[([0-9:]+),\s*([0-9.?]+)(s/it|it/s)\]")
_LOSS = re.compile(r"avr_loss=([-+]?(?:[0-9.]+(?:e[-+]?\d+)?|nan|inf))", re.I)
_STARTUP = {
    "num train items": "items",
    "num batches per epoch": "batches_per_epoch",
    "num epochs": "epochs",
    "total optimization steps": "total_steps",
}
_STARTUP_RE = re.compile(r"^\s+(num train items|num batches per epoch|num epochs|total optimization steps) /[^:]*:\s*(\d+)")
_OVERRIDE = re.compile(r"^override steps\. steps for (\d+) epochs is /[^:]*:\s*(\d+)")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+)\s*$")
_STATE_AT = re.compile(r"saving state at (step|epoch) (\d+)")
_SAMPLE = re.compile(r"generating sample images at step /[^:]*:\s*(\d+)")
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?::\s?(.*))?$")
_ARGPARSE = re.compile(r"^\S+\.py: error: (.+)$")


def _clock(text: str) -> float | None:
    if not text or "?" in text:
        return None
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _num(text: str) -> float:
    return float(text)


def _progress(m: re.Match) -> Event:
    step, total = int(m.group(1)), int(m.group(2))
    rate = m.group(5)
    s_per_it = None
    first = int(m.group(1)) <= 1 and _clock(m.group(3)) == 0
    # musubi restarts the bar's clock after the first step: the rate shown with it is meaningless
    if "?" not in rate and not first:
        value = float(rate)
        s_per_it = value if m.group(6) == "s/it" else (1.0 / value if value else None)
    loss = None
    postfix = m.group(7) or ""
    lm = _LOSS.search(postfix)
    if lm:
        loss = float(lm.group(1))
    return Event("progress", step=step, total=total, loss=loss, s_per_it=s_per_it,
                 elapsed_s=_clock(m.group(3)), eta_s=None if first else _clock(m.group(4)))


def parse_line(line: str) -> list[Event]:
    """All events in one console segment (already split on \\r and \\n)."""
    if not line.strip():
        return []
    m = _BAR.search(line)
    if m:
        events = [_progress(m)]
        rest = line[m.end():]
        if rest.strip():
            events.extend(parse_line(rest))
        return events
    s = line.rstrip()
    if s.startswith("INFO:") or s.startswith("WARNING:") or s.startswith("ERROR:"):
        _, _, body = s.partition(":")
        logger, _, msg = body.partition(":")
        return _log_event(logger, msg)
    if s.startswith("saving checkpoint: "):
        return [Event("checkpoint", path=s[len("saving checkpoint: "):])]
    if s.startswith("removing old checkpoint: "):
        return [Event("removed", path=s[len("removing old checkpoint: "):], key="checkpoint")]
    m = _STARTUP_RE.match(s)
    if m:
        return [Event("startup", key=_STARTUP[m.group(1)], value=int(m.group(2)))]
    if s.startswith("running training"):
        return [Event("stage", text="training")]
    m = _EPOCH.match(s)
    if m:
        return [Event("epoch", epoch=int(m.group(1)), epochs=int(m.group(2)))]
    m = _OVERRIDE.match(s)
    if m:
        return [Event("startup", key="total_steps", value=int(m.group(2)))]
    m = _CACHE_BAR.match(s)
    if m:
        rate = m.group(3)
        spi = None
        if "?" not in rate:
            v = float(rate)
            spi = v if m.group(4) == "s/it" else (1.0 / v if v else None)
        return [Event("cache_progress", step=int(m.group(1)), s_per_it=spi, elapsed_s=_clock(m.group(2)))]
    if _EXC.match(s) and not s.startswith("subprocess.CalledProcessError"):
        return [Event("error", text=s)]
    m = _ARGPARSE.match(s)
    if m:
        return [Event("error", text=s)]
    return []


def _log_event(logger: str, msg: str) -> list[Event]:
    if logger == "musubi_tuner.training.trainer_base":
        if msg.strip() == "model saved.":
            return [Event("model_saved")]
        if msg.startswith("resume training from local state: "):
            return [Event("resumed", path=msg.split(": ", 1)[1])]
        m = _SAMPLE.search(msg)
        if m:
            return [Event("sample", step=int(m.group(1)))]
    elif logger == "musubi_tuner.utils.train_utils":
        m = _STATE_AT.search(msg)
        if m:
            return [Event("state", key=m.group(1), value=int(m.group(2)))]
        if msg.strip() == "saving last state.":
            return [Event("state", key="last")]
        if msg.startswith("removing old state: "):
            return [Event("removed", path=msg.split(": ", 1)[1], key="state")]
    elif logger == "accelerate.accelerator" and msg.startswith("Saving current state to "):
        return [Event("state", key="dir", path=msg[len("Saving current state to "):])]
    elif logger == "accelerate.checkpointing" and msg.startswith("Random states saved in "):
        # the last file accelerate writes: the state folder is complete now
        path = msg[len("Random states saved in "):]
        return [Event("state_saved", path=path.rsplit("/", 1)[0])]
    elif logger.endswith("cache_latents") and msg.startswith("Encoding dataset"):
        return [Event("stage", text="cache_latents")]
    elif "cache_text_encoder" in logger and msg.startswith("Encoding with"):
        return [Event("stage", text="cache_text_encoder")]
    return []


class LineSplitter:
    """Bytes in, complete segments out; splits on \\r and \\n like a terminal would redraw."""

    def __init__(self) -> None:
        self._buf = b""
        self._sent: bytes | None = None  # an unterminated progress bar already handed out

    def feed(self, data: bytes) -> list[str]:
        data = self._buf + data
        parts = re.split(rb"[\r\n]", data)
        self._buf = parts.pop()
        if len(self._buf) > 1 << 20:  # a runaway line without a newline: cut it rather than grow forever
            parts.append(self._buf)
            self._buf = b""
        if self._sent is not None and parts and parts[0] == self._sent:
            parts.pop(0)  # its terminator arrived: it was handed out already
        self._sent = None
        out = [p.decode("utf-8", "replace") for p in parts if p]
        # tqdm writes "\r" BEFORE each redraw, so a finished bar sits unterminated until the next step's
        # update; hand a complete bar out now, or progress would always be one step late.
        tail = self._buf.decode("utf-8", "replace")
        if tail.rstrip().endswith("]") and _BAR.search(tail):
            out.append(tail)
            self._sent = self._buf
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace")] if rest else []


# ---------------------------------------------------------------------------------------------------
# failure classification

_VRAM_OOM = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "OutOfMemoryError",
    "HIP out of memory",
)
CPU_ALLOCATOR_REFUSED = "DefaultCPUAllocator: can't allocate memory"   # torch's CPU allocator (pinned memory too)
_RAM_OOM = (
    CPU_ALLOCATOR_REFUSED,
    "died with <Signals.SIGKILL: 9>",
    "returned non-zero exit status -9",
    "Cannot allocate memory",
)


@dataclass(frozen=True)
class Failure:
    outcome: str  # "oom_vram" | "oom_ram" | "crashed"
    line: str     # the trainer's own error line (one line)


def error_line(tail: Sequence[str]) -> str | None:
    """The trainer's own error line: the last exception line that is not accelerate's wrapper."""
    found = None
    for raw in tail:
        s = raw.strip()
        if s.startswith("subprocess.CalledProcessError"):
            continue
        if _EXC.match(s) or _ARGPARSE.match(s):
            found = s
    return found


def classify_failure(tail: Iterable[str], exit_code: int | None) -> Failure:
    """Classify a failed attempt from the end of its console output, then from the exit status.

    Under ``accelerate launch`` every failure is exit 1, so the text decides; a trainer killed by the
    kernel's OOM killer leaves no text of its own, only SIGKILL (directly, or as accelerate's
    ``died with <Signals.SIGKILL: 9>``).
    """
    lines = [line.rstrip() for line in tail]
    for line in lines:
        if any(p in line for p in _VRAM_OOM):
            return Failure("oom_vram", _short(line))
    for line in lines:
        if any(p in line for p in _RAM_OOM):
            mine = error_line(lines)
            return Failure("oom_ram", _short(mine if mine and "alloc" in mine.lower() else line))
    if exit_code in (-9, 137):
        return Failure("oom_ram", "the trainer was killed by SIGKILL (the kernel's out-of-memory killer)")
    mine = error_line(lines)
    if mine:
        return Failure("crashed", _short(mine))
    if exit_code is not None and exit_code < 0:
        return Failure("crashed", f"the trainer died from signal {-exit_code}")
    last = next((ln for ln in reversed(lines) if ln.strip()), "")
    return Failure("crashed", _short(f"exit status {exit_code}" + (f": {last.strip()}" if last else "")))


def _short(line: str, limit: int = 400) -> str:
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def is_bad_loss(loss: float | None) -> bool:
    return loss is not None and (math.isnan(loss) or math.isinf(loss))
