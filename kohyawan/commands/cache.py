"""``kohyawan cache list|prune``: what the shared cache store holds, and removing what no run refers to
(the store itself is ``kohyawan.cachestore``; see docs/architecture.md, "Caches")."""

from __future__ import annotations

import re
from pathlib import Path

import click

from kohyawan import console
from kohyawan.commands.common import CACHE_DIR_OPTION, cache_store
from kohyawan.errors import BadInput

_RUNS_DIR = click.option("--runs-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                         help="Runs folder whose store (RUNS_DIR/.cache) to use when no --cache-dir is given.")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0}


@click.group()
def cache():
    """List and prune the cache store that runs, sweeps and batches share.

    Each folder holds one dataset's latent and text-encoder caches for one set of caching settings
    (resolution, frames, VAE, T5...); runs that differ only in training settings share it.

    \b
    Example:
      kohyawan cache list --runs-dir ./runs
    """


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _settings(doc: dict) -> str:
    s = doc.get("settings") or {}
    reso = s.get("resolution")
    parts = [f"{reso[0]}x{reso[1]}" if isinstance(reso, list) else f"{reso}x{reso}" if reso else "960x544"]
    if s.get("enable_bucket"):
        parts.append("bucketed")
    mode = s.get("frame_extraction")
    if mode == "full":
        parts.append(f"full clips up to {s.get('max_frames', 129)} frames")
    elif mode or "target_frames" in s:
        parts.append(f"{mode or 'head'} {s.get('target_frames', [1])} frames")
    if doc.get("i2v"):
        parts.append("+ image latents (i2v)")
    return ", ".join(parts)


@cache.command("list")
@CACHE_DIR_OPTION
@_RUNS_DIR
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_caches(cache_dir, runs_dir, as_json):
    """Show every cache folder: size, dataset, settings, items cached, runs that used it, last use.

    \b
    Example:
      kohyawan cache list --json
    """
    from kohyawan.cachestore import store

    root = cache_store(cache_dir, runs_dir)
    rows = [f.document() for f in store.folders(root)]
    if as_json:
        console.print_json({"store": str(root), "folders": rows})
        return
    c = console.out()
    if not rows:
        c.print(f"no cache folders in {root}", markup=False)
        return
    for r in rows:
        runs = [u["run_id"] for u in r["runs"]]
        state = "in use" if r["in_use"] else "kept by a run" if r["referred"] else "no run refers to it"
        c.print(f"{Path(r['folder']).name}  {_human(r['bytes'])}  {r['kind'] or '?'}s of {r['media'] or '?'}", markup=False)
        c.print(f"    {_settings(r['latent'] or {})}; {r['latent_items']} latent / {r['text_items']} text item(s); last used "
                f"{r['last_used']}; {state}; runs: {', '.join(runs) or 'none recorded'}", markup=False)
    total = sum(r["bytes"] for r in rows)
    c.print(f"{len(rows)} folder(s), {_human(total)} in {root}", markup=False)


def parse_age(text: str) -> float:
    """'30d', '12h', '90m' or a number of days -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhm]?)\s*", text or "")
    if not m:
        raise BadInput(f"--older-than {text!r}: give an age like 30d, 12h, 90m (or a number of days)")
    return float(m.group(1)) * _UNITS[m.group(2) or "d"]


@cache.command()
@CACHE_DIR_OPTION
@_RUNS_DIR
@click.option("--older-than", "older_than", metavar="AGE", default=None,
              help="Only folders last used longer ago than AGE (30d, 12h, 90m, or a number of days).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was (or would be) removed as JSON.")
def prune(cache_dir, runs_dir, older_than, dry_run, as_json):
    """Remove cache folders that no run still refers to.

    A run refers to a folder while its run folder exists and its run.json lists the folder; a folder in
    use (a run caching into it or training from it) is never removed. Caches of manual runs
    ('config render' + commands.sh) are referred to by no run: use --older-than to keep recent ones.

    \b
    Example:
      kohyawan cache prune --older-than 30d --dry-run
    """
    from kohyawan.cachestore import store

    age = parse_age(older_than) if older_than is not None else None
    root = cache_store(cache_dir, runs_dir)
    if not dry_run:
        store.sweep_leftovers(root)
    rows = []
    for info in store.prunable(root, age):
        removed = False if dry_run else store.remove(info)
        rows.append({"folder": str(info.path), "bytes": info.bytes, "last_used": info.last_used,
                     "removed": removed, "in_use": not dry_run and not removed})
    if as_json:
        console.print_json({"store": str(root), "dry_run": dry_run, "folders": rows})
        return
    c = console.out()
    for r in rows:
        verb = "would remove" if dry_run else "removed" if r["removed"] else "kept (in use now)"
        c.print(f"{verb} {Path(r['folder']).name} ({_human(r['bytes'])}, last used {r['last_used']})", markup=False)
    freed = sum(r["bytes"] for r in rows if r["removed"] or dry_run)
    c.print(f"{'would free' if dry_run else 'freed'} {_human(freed)} in {root}"
            + ("" if rows else " (nothing to prune)"), markup=False)
