"""How numbers look on the pages (Jinja filters); the values themselves come from the library."""

from __future__ import annotations

from kohyawan.registry.notes import _size as size


def hms(seconds) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def dash(value) -> str:
    return "-" if value is None or value == "" else str(value)


def pct(step, total) -> int:
    return int(100 * step / total) if total else 0


def brief(text) -> str:
    from kohyawan.run.runview import brief as cut

    return cut(text)


FILTERS = {"hms": hms, "num": num, "dash": dash, "size": size, "brief": brief, "pct": pct}
