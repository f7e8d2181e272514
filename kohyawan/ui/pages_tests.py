"""Test grids, sweeps and batches: the contact sheets and cell tables of ``comfy grid`` (its ``grid.json``),
the comparison table of ``kohyawan sweep`` (``sweep.json``) and of ``kohyawan batch status`` (the batch
queue, read live), and the files a grid wrote, served only from inside the configured folders."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from kohyawan.ui.app import render
from kohyawan.ui.config import NotFound, check_name, inside, pick
from kohyawan.files import jsonfile

GRID_DEPTH = 3   # grid.json is looked for this many folders deep under each --grids folder
SWEEP_GRID_DEPTH = 2   # and in runs folders only where a sweep puts its grid (RUNS_DIR/SWEEP/grid)


def find_grids(cfg) -> list[dict]:
    found = []
    for i, root in enumerate(cfg.grid_roots()):
        for depth in range((GRID_DEPTH if i < len(cfg.grid_dirs) else SWEEP_GRID_DEPTH) + 1):
            for path in sorted(root.glob("/".join(["*"] * depth + ["grid.json"]))):
                manifest = jsonfile.read_object(path)
                if not manifest or "cells" not in manifest:
                    continue
                cells = manifest["cells"]
                rel = path.parent.relative_to(root).as_posix()
                found.append({"root": i, "rel": rel, "name": manifest.get("name") or rel, "task": manifest.get("task"),
                              "cells": len(cells), "done": sum(c.get("status") == "done" for c in cells),
                              "failed": sum(c.get("status") not in ("done", "planned") for c in cells),
                              "sheet": manifest.get("contact_sheet"), "dir": str(path.parent)})
    return found


def find_sweeps(cfg) -> list[dict]:
    found = []
    for i, root in enumerate(cfg.runs_dirs):
        for path in sorted(root.glob("*/sweep.json")):
            doc = jsonfile.read_object(path)
            if doc and "variants" in doc:
                found.append({"root": i, "name": path.parent.name, "doc": doc})
    return found


def tests_page(request: Request) -> Response:
    from kohyawan.batch import driver

    cfg = request.app.state.cfg
    batches = []
    for i, folder in enumerate(cfg.batch_dirs):
        try:
            doc = driver.status(folder)
        except Exception as exc:  # a folder not (yet) a batch: say so in its row
            batches.append({"index": i, "dir": str(folder), "error": str(exc)})
            continue
        batches.append({"index": i, "dir": str(folder), "counts": doc["counts"], "driver": doc["driver_pid"]})
    return render(request, "tests.html", nav="tests", grids=find_grids(cfg), sweeps=find_sweeps(cfg), batches=batches)


def _grid_dir(request: Request) -> tuple[int, Path, str]:
    index = request.path_params["root"]
    root = pick(request.app.state.cfg.grid_roots(), index, "grid")
    rel = request.path_params["rel"]
    folder = inside(root, rel)
    if not (folder / "grid.json").is_file():
        raise NotFound(f"no grid at {rel!r}")
    return index, folder, rel


def grid_page(request: Request) -> Response:
    from kohyawan.comfy.sheet import VIDEO_SUFFIXES, _grid

    index, folder, rel = _grid_dir(request)
    manifest = jsonfile.read_object(folder / "grid.json") or {}
    rows, cols, cells = _grid(manifest)
    base = f"/files/{index}/{rel}"
    return render(request, "grid.html", nav="tests", m=manifest, rows=rows, cols=cols, cells=cells, base=base,
                  has_index=(folder / "index.html").is_file(),
                  video=lambda rel: Path(rel).suffix.lower() in VIDEO_SUFFIXES)


def sweep_page(request: Request) -> Response:
    from kohyawan.batch.tables import SWEEP_COLUMNS, sweep_rows

    root = pick(request.app.state.cfg.runs_dirs, request.path_params["root"], "runs")
    name = check_name(request.path_params["name"], "sweep")
    doc = jsonfile.read_object(root / name / "sweep.json")
    if not doc:
        raise NotFound(f"no sweep {name!r} in {root}")
    runs = {r["variant"]: r.get("run_id") for r in doc["variants"]}
    grid = doc.get("comparison_grid") or {}
    grid_link = None
    if grid.get("dir"):
        for i, groot in enumerate(request.app.state.cfg.grid_roots()):
            if Path(grid["dir"]).is_relative_to(groot):
                grid_link = f"/grids/{i}/{Path(grid['dir']).relative_to(groot).as_posix()}"
                break
    return render(request, "sweep.html", nav="tests", doc=doc, columns=SWEEP_COLUMNS, rows=sweep_rows(doc),
                  runs=runs, root=request.path_params["root"], grid_link=grid_link)


def batch_page(request: Request) -> Response:
    from kohyawan.batch import driver
    from kohyawan.batch.tables import BATCH_COLUMNS, batch_rows

    folder = pick(request.app.state.cfg.batch_dirs, request.path_params["index"], "batch")
    doc = driver.status(folder)
    return render(request, "batch.html", nav="tests", doc=doc, columns=BATCH_COLUMNS, rows=batch_rows(doc))


def grid_file(request: Request) -> Response:
    root = pick(request.app.state.cfg.grid_roots(), request.path_params["root"], "grid")
    path = inside(root, request.path_params["rel"])
    # only what a grid wrote: the file must sit in a folder (or below one) that holds a grid.json
    in_grid = any((parent / "grid.json").is_file() for parent in path.parents
                  if parent.is_relative_to(root.resolve()))
    if not path.is_file() or not in_grid:
        raise NotFound(f"no grid file {request.path_params['rel']!r}")
    return FileResponse(path)


ROUTES = [
    Route("/tests", tests_page),
    Route("/grids/{root:int}/{rel:path}", grid_page),
    Route("/sweeps/{root:int}/{name}", sweep_page),
    Route("/batches/{index:int}", batch_page),
    Route("/files/{root:int}/{rel:path}", grid_file),
]
