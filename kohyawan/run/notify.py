"""Webhook notifications: one JSON POST per message, Slack (``text``) and Discord (``content``) alike.

A notification never breaks a run: every failure is swallowed and reported as a warning once per URL.
Only the URLs the user gave are contacted.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import json
import urllib.request
from typing import Callable, Sequence


class Notifier:
    def __init__(self, urls: Sequence[str], *, run_id: str = "", timeout_s: float = 5.0,
                 warn: Callable[[str], None] | None = None):
        self.urls = list(urls)
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.warn = warn
        self.failed: set[str] = set()
        self.sent = 0

    def send(self, event: str, text: str, **fields) -> int:
        """Post to every URL; returns how many accepted it."""
        if not self.urls:
            return 0
        line = f"kohyawan {self.run_id}: {text}" if self.run_id else f"kohyawan: {text}"
        body = json.dumps({"text": line, "content": line[:2000], "event": event, "run": self.run_id, **fields},
                          default=str).encode()
        ok = 0
        for url in self.urls:
            try:
                req = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "kohyawan"})
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read(1024)
                ok += 1
            except Exception as exc:  # any failure at all: the run matters more than the message
                if url not in self.failed and self.warn:
                    self.warn(f"notification to {url} failed ({type(exc).__name__}: {exc}); the run goes on")
                self.failed.add(url)
        self.sent += ok
        return ok
