"""Reading and normalising captions (pure apart from reading the file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kohyawan.dataset.probe import read_source

# umT5's sentencepiece splits ordinary English into ~1.3 pieces per word; punctuation is its own piece.
TOKENS_PER_WORD = 1.3


@dataclass(frozen=True)
class Caption:
    text: str | None              # None when unusable
    reason: str | None            # missing_caption | empty_caption | caption_encoding
    notes: tuple[str, ...] = ()


def estimate_tokens(text: str) -> int:
    words = len(re.findall(r"\w+", text))
    marks = len(re.findall(r"[^\w\s]", text))
    return int(words * TOKENS_PER_WORD + marks)


def normalise(raw: str, trigger: str | None, max_tokens: int) -> Caption:
    # one line, single spaces: the trainer reads the file as one prompt
    text = " ".join(raw.split())
    if not text:
        return Caption(None, "empty_caption")
    if trigger:
        trigger = " ".join(trigger.split())
        if not re.match(re.escape(trigger) + r"(\b|\W|$)", text):
            text = f"{trigger}, {text}"
    notes = []
    tokens = estimate_tokens(text)
    if tokens > max_tokens:
        notes.append(f"caption_long: about {tokens} tokens; the text encoder reads only {max_tokens}")
    return Caption(text, None, tuple(notes))


def load(path: Path | None, trigger: str | None, max_tokens: int) -> Caption:
    if path is None:
        return Caption(None, "missing_caption")
    data = read_source(path)
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Caption(None, "caption_encoding", (f"caption_encoding: not UTF-8 at byte {exc.start}",))
    return normalise(raw, trigger, max_tokens)
