"""``kohyawan dataset prepare|check``: thin click skin over ``kohyawan.dataset``."""

from __future__ import annotations

from pathlib import Path

import click

from kohyawan.errors import BadInput, DatasetError, WorkFailed


def _profile_overrides(profile: str | None) -> dict:
    """[prepare] thresholds and [profile] min sizes of a profile, when the core's resolver is present."""
    if not profile:
        return {}
    from kohyawan.config import profiles

    extra = profiles.resolve(profile).extra
    overrides = dict(extra.get("prepare", {}) or {})
    sizes = extra.get("profile", {}) or {}
    for key in ("min_images", "min_clips"):
        if key in sizes and key not in overrides:
            overrides[key] = sizes[key]
    return overrides


def _parse_sets(items: tuple[str, ...]) -> dict:
    from kohyawan.files import toml

    result = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--threshold wants KEY=VALUE, got {item!r}")
        try:
            value = toml.loads(f"v = {raw}")["v"]
        except toml.TOMLDecodeError:
            value = raw
        result[key.strip()] = value
    return result


@click.group()
def dataset():
    """Prepare raw images and videos into a WAN training set, and check prepared sets.

    \b
    Example:
      kohyawan dataset prepare ./raw --out ./data --profile character --trigger ohwx
      kohyawan dataset check ./data
    """


@dataset.command()
@click.argument("src", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "dest", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the prepared dataset (created; reruns are incremental).")
@click.option("--profile", help="Profile whose [prepare] thresholds and dataset-size targets apply.")
@click.option("--resolution", type=int, help="Output size in px (square; the area with --keep-aspect). Default 512.")
@click.option("--keep-aspect", is_flag=True, default=None, help="Keep each source's aspect (trainer buckets them).")
@click.option("--fps", type=float, help="Clip frame rate. Default 16 (WAN 14B native); 24 for 5B-style data.")
@click.option("--frames", help="Clip lengths, 4n+1, comma-separated. Default 17,21,25.")
@click.option("--trigger", help="Word put once at the front of every caption.")
@click.option("--threshold", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a [prepare] setting, e.g. blur_threshold=0.02 (repeatable).")
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel processes. Default: CPU cores.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def prepare(src, dest, profile, resolution, keep_aspect, fps, frames, trigger, sets, jobs, as_json):
    """Scan SRC, drop unusable files, normalise the rest into DEST.

    Writes DEST/images/*.png and DEST/videos/*.mp4 with same-name .txt captions, DEST/dataset.toml
    (musubi-tuner's dataset config) and DEST/report.json (what was kept, changed or dropped, and why).
    SRC is only read.

    \b
    Example:
      kohyawan dataset prepare ./raw --out ./data --profile motion --fps 16 --frames 17,25
      kohyawan dataset prepare ./raw --out ./data --json | jq .summary
    """
    from kohyawan.console import err, out, print_json
    from kohyawan.dataset.settings import settings_from
    from kohyawan.dataset.prepare import prepare as run_prepare
    from kohyawan.dataset.progress import Progress
    from kohyawan.dataset.report import render

    overrides = _profile_overrides(profile)
    overrides.update(_parse_sets(sets))
    cli = {"resolution": resolution, "keep_aspect": keep_aspect, "fps": fps, "trigger": trigger}
    if frames:
        try:
            cli["frames"] = [int(v) for v in frames.replace(" ", "").split(",") if v]
        except ValueError:
            raise BadInput(f"--frames wants comma-separated numbers, got {frames!r}") from None
    overrides.update({k: v for k, v in cli.items() if v is not None})
    settings = settings_from(overrides)
    try:
        report = run_prepare(src, dest, settings, jobs=jobs, profile=profile, progress=Progress(enabled=True))
    except PermissionError as exc:
        raise DatasetError(f"permission denied: {exc.filename or exc}") from None
    except OSError as exc:  # a full disk, a vanished folder: one line, not a traceback
        raise WorkFailed(f"dataset prepare failed: {exc.strerror or exc}: {exc.filename or ''}") from None
    if as_json:
        print_json(report)
    else:
        render(report, out())
        err().print(f"wrote {dest / 'dataset.toml'} and {dest / 'report.json'}", highlight=False)
    summary = report["summary"]
    if summary["images"] + summary["clips"] == 0:
        raise WorkFailed(f"nothing usable was kept from {src}: see {dest / 'report.json'}")


@dataset.command()
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(dest, as_json):
    """Check a prepared dataset folder: config, captions, decodable media, 4n+1 clip lengths.

    Exits 1 when something would break or silently shrink training.

    \b
    Example:
      kohyawan dataset check ./data
      kohyawan dataset check ./data --json
    """
    from kohyawan.console import out, print_json
    from kohyawan.dataset.check import check_dataset

    result = check_dataset(dest)
    if as_json:
        print_json(result.as_dict())
    else:
        console = out()
        for problem in result.problems:
            console.print(f"problem: {problem}", markup=False, highlight=False)
        console.print(f"{result.images} image(s), {result.clips} clip(s): " + ("ok" if result.ok else
                      f"{len(result.problems)} problem(s)"), highlight=False)
    if not result.ok:
        raise WorkFailed(f"dataset {dest} has {len(result.problems)} problem(s)")
