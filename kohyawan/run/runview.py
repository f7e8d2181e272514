"""What a running job shows: a rich live panel on a terminal, a plain line at a steady interval otherwise.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from kohyawan import console

REHEARSAL_NOTE = "REHEARSAL - simulated trainer, no training happens"


@dataclass
class Status:
    run_id: str = ""
    stage: str = "preflight"
    step: int = 0
    total: int | None = None
    loss: float | None = None
    s_per_it: float | None = None
    eta_s: float | None = None
    vram_used: float | None = None
    vram_total: float | None = None
    ram_gb: float | None = None
    attempt: int = 0
    rung: str | None = None
    rehearsal: bool = False

    def line(self) -> str:
        parts = [f"[{self.run_id}]" if self.run_id else "", self.stage]
        if self.stage.startswith("train"):
            parts.append(f"step {self.step}/{self.total if self.total else '?'}")
            if self.loss is not None:
                parts.append(f"loss {self.loss:.4g}")
            if self.s_per_it:
                parts.append(f"{self.s_per_it:.2f} s/it")
            if self.eta_s is not None:
                parts.append(f"ETA {_hms(self.eta_s)}")
        if self.vram_used is not None:
            parts.append(f"VRAM {self.vram_used:.1f}/{self.vram_total:.1f} GB")
        if self.ram_gb is not None:
            parts.append(f"RAM {self.ram_gb:.1f} GB")
        if self.attempt:
            parts.append(f"attempt {self.attempt}" + (f" ({self.rung})" if self.rung else ""))
        if self.rehearsal:
            parts.append(f"** {REHEARSAL_NOTE} **")
        return "  ".join(p for p in parts if p)


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class View:
    def __init__(self, status: Status, *, live: bool | None = None, interval_s: float = 30.0, quiet: bool = False):
        self.status = status
        self.live = sys.stderr.isatty() if live is None else live
        self.interval_s = interval_s
        self.quiet = quiet
        self._last = 0.0
        self._live = None

    def __enter__(self):
        if self.live and not self.quiet:
            from rich.live import Live

            self._live = Live(self._panel(), console=console.err(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self._panel())
            self._live.__exit__(*exc)
            self._live = None

    def _panel(self):
        from rich.panel import Panel
        from rich.table import Table

        s = self.status
        t = Table.grid(padding=(0, 2))
        t.add_row("stage", s.stage)
        if s.stage.startswith("train"):
            pct = f" ({100 * s.step / s.total:.0f}%)" if s.total else ""
            t.add_row("step", f"{s.step}/{s.total or '?'}{pct}")
            t.add_row("loss", f"{s.loss:.4g}" if s.loss is not None else "-")
            t.add_row("speed", f"{s.s_per_it:.2f} s/it" if s.s_per_it else "-")
            t.add_row("ETA", _hms(s.eta_s) if s.eta_s is not None else "-")
        t.add_row("VRAM", f"{s.vram_used:.1f} / {s.vram_total:.1f} GB" if s.vram_used is not None else "not measured")
        t.add_row("RAM", f"{s.ram_gb:.1f} GB" if s.ram_gb is not None else "-")
        t.add_row("attempt", f"{s.attempt}" + (f"  rung: {s.rung}" if s.rung else ""))
        title = f"kohyawan run {s.run_id}"
        if s.rehearsal:
            title += f"  [bold red]{REHEARSAL_NOTE}[/bold red]"
        return Panel(t, title=title, expand=False)

    def refresh(self, force: bool = False) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(self._panel())
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            print(self.status.line(), file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)


def brief(text: str | None) -> str:
    """A failure line short enough for a terminal: torch's OOM text up to the free-memory sentence."""
    if not text:
        return ""
    cut = text.find(" Including non-PyTorch memory")
    text = text[:cut] if cut > 0 else text
    return text if len(text) <= 240 else text[:239] + "…"
