"""Progress on stderr: a rich bar (files done, time left, what is running) on a terminal, plain lines
otherwise (logs and CI get one line per finished file, never carriage-return spinners)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        self._task = None
        self._running: list[str] = []
        self._phase = ""
        self._done = 0
        self._total = 0

    def __enter__(self):
        if self.tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeRemainingColumn)
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[running]}"),
                            console=Console(file=self.stream), transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def phase(self, name: str, total: int) -> None:
        self._phase, self._done, self._total, self._running = name, 0, total, []
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(name, total=total, running="")
        elif self.enabled and total:
            self._line(f"{name}: {total} file(s)")

    def started(self, label: str) -> None:
        self._running.append(label)
        self._refresh()

    def finished(self, label: str, outcome: str = "") -> None:
        if label in self._running:
            self._running.remove(label)
        self._done += 1
        if self._bar is not None:
            self._bar.advance(self._task)
            self._refresh()
        elif self.enabled:
            self._line(f"{self._phase} {self._done}/{self._total} {label}" + (f": {outcome}" if outcome else ""))

    def retried(self, label: str, why: str) -> None:
        """A job that will run again (its ffmpeg died): not done, no longer running; said on every stream."""
        if label in self._running:
            self._running.remove(label)
        if self._bar is not None:
            self._bar.console.print(f"{why}; running it again", markup=False, highlight=False)
            self._refresh()
        elif self.enabled:
            self._line(f"{self._phase} {label}: {why}; running it again")

    def _refresh(self) -> None:
        if self._bar is not None:
            shown = ", ".join(self._running[:3]) + (" ..." if len(self._running) > 3 else "")
            shown = shown.replace("\n", "\\n")  # a newline in a file name must not break the bar
            self._bar.update(self._task, running=shown)

    def _line(self, text: str) -> None:
        # one physical line even for names with newlines in them
        self.stream.write(time.strftime("%H:%M:%S ") + text.replace("\n", "\\n") + "\n")
        self.stream.flush()
