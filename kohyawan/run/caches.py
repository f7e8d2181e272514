"""A run's caching stages: find the caches complete (skip), or bring them up to date and vouch for them.

With the cache store (every run started since it exists) each dataset's cache folder is shared with every
run, sweep and batch job that needs the same latents and text (``kohyawan.cachestore``). A stage then:

1. waits until it either holds all its folders shared and finds every item complete (nothing to do), or
   holds them exclusively (``cachestore.lease``);
2. exclusively: forgets everything with ``--recache``, removes damaged, stale and orphaned files, borrows
   whole text caches of unchanged captions from sibling folders (text stage), and runs the script with
   ``--skip_existing`` only if items are still missing: only those are encoded;
3. writes each folder's completion marker last, then holds the folders shared while the run trains.

Runs started before the store keep their own ``RUN/cache/`` folders, their scripts without
``--skip_existing`` and the checks they were started with (``legacy_missing``): a fingerprint of the
dataset config and model file in a marker per folder, every item's cache newer than its inputs.
See docs/architecture.md ("Caches").
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

from kohyawan.cachestore import store
from kohyawan.cachestore.folder import Survey, clear, dataset_sources, mark, survey, tidy, utc_stamp
from kohyawan.cachestore.keys import CacheFolder
from kohyawan.cachestore.lease import SHARED, Leases
from kohyawan.run.steps import Stop, stage_record
from kohyawan.trainer.cachefiles import items, load

TEXT_STAGE = "cache_text_encoder"


def plan_folders(document: dict) -> list[CacheFolder] | None:
    """The store folders a rendered plan caches into; None for a run folder's own ``cache/``."""
    caches = document.get("caches") or []
    if not caches or any("key" not in c for c in caches):
        return None
    return [CacheFolder.from_document(c) for c in caches]


def dataset_config_of(argv) -> Path:
    argv = list(argv)
    return Path(argv[argv.index("--dataset_config") + 1])


class Caching:
    """The caching stages of one ``kohyawan.run.runner.Run``, and the cache folders it holds."""

    def __init__(self, run):
        self.run = run
        self.leases = Leases()

    def release(self) -> None:
        self.leases.release_all()

    def stage(self, stage, folders: list[CacheFolder], *, force: bool, quiet_skip: bool) -> None:
        run = self.run
        datasets = {ds.index: ds for ds in load(str(dataset_config_of(stage.argv)))}
        pairs = [(cf, datasets[cf.index]) for cf in folders]
        names = ", ".join(cf.path.name for cf in folders)
        record = stage_record(run.ledger.data, stage.name)
        wanted, wrote = force, None

        def done() -> bool:
            return not wanted and all(survey(stage.name, ds, cf.path, cf.key).complete for cf, ds in pairs)

        def waiting() -> None:
            run.view.say(f"{stage.name}: waiting for {names} (another run is writing it or training from it)")

        while True:
            mode = self.leases.settle([cf.path for cf in folders], done, waiting)
            for cf in folders:
                store.describe(cf)
            if mode == SHARED:
                break
            wrote = self._write(stage, pairs, wanted, record)
            wanted = False
            left = [r for r in (survey(stage.name, ds, cf.path, cf.key).reason() for cf, ds in pairs) if r]
            self.leases.release_all()
            if left:   # the script succeeded and still left items out: running it again would do the same
                raise Stop("failed", f"{stage.name}: the cache script finished but the cache is still incomplete "
                                     f"({'; '.join(left)}); see the stage's log")
        self._used(stage.name, folders, record)
        if wrote is None and not quiet_skip:
            record.update(status="skipped", reason=f"caches complete in {names}")
            run.ledger.save()
            run.view.say(f"{stage.name}: skipped (caches complete in {names})")

    def _write(self, stage, pairs, force: bool, record) -> str:
        """Under the folders' exclusive locks: tidy, borrow, run the script for what is missing, vouch."""
        found: list[tuple[CacheFolder, object, Survey]] = []
        for cf, ds in pairs:
            if force:
                clear(stage.name, cf.path, ds.is_image)
            checked = survey(stage.name, ds, cf.path, cf.key)
            tidy(checked)
            if stage.name == TEXT_STAGE and checked.missing:
                captions = {k: s.caption for k, s in dataset_sources(ds).items()}
                if store.borrow_text(cf.path, cf.text_key, captions, checked.missing):
                    checked = survey(stage.name, ds, cf.path, cf.key)
            found.append((cf, ds, checked))
        todo = [s for _, _, s in found if s.missing]
        if todo:
            why = "forced (--recache)" if force else "; ".join(s.reason() for s in todo)
            self.run.run_cache_script(stage, why, record)
        else:
            why = "; ".join(s.reason() for _, _, s in found if s.reason()) or "recorded"
            record.update(status="skipped", reason=f"nothing to encode: {why}")
            self.run.view.say(f"{stage.name}: nothing to encode ({why})")
        for cf, ds, checked in found:
            mark(checked, ds, cf.key)
        self.run.ledger.save()
        return why

    def _used(self, stage_name: str, folders: list[CacheFolder], record) -> None:
        """On the books: the folders in run.json's ``caches`` (what ``runs show`` and ``cache prune`` read)
        and this run in each folder's ``uses/``."""
        led = self.run.ledger
        known = {c["cache_directory"]: c for c in led.data.setdefault("caches", [])}
        now = utc_stamp()
        for cf in folders:
            entry = known.get(str(cf.path))
            if entry is None:
                entry = {"cache_directory": str(cf.path), "dataset": cf.index, "kind": cf.kind, "media": cf.media,
                         "key": cf.key, "first_used": now, "attempt": len(led.data.get("attempts", [])) + 1}
                led.data["caches"].append(entry)
            entry["last_used"] = now
            store.record_use(cf.path, led.dir, led.data["id"])
        record["cache_dirs"] = [str(cf.path) for cf in folders]
        led.save()


# --- runs started before the store: their own RUN/cache/ ---------------------------------------------------
LEGACY_MARK = {"cache_latents": ".kohyawan-latents.json", "cache_text_encoder": ".kohyawan-text.json"}


def legacy_fingerprint(stage: str, dataset_toml: Path, model: str | None) -> str:
    datasets = load(str(dataset_toml))
    if stage == "cache_latents":
        basis = Path(dataset_toml).read_text(encoding="utf-8")
    else:  # captions only: resolution and frames do not change the text caches
        basis = json.dumps([(d.media_dir, d.jsonl, d.caption_extension, d.cache_directory) for d in datasets])
    return hashlib.sha256(f"{basis}\n{model}".encode()).hexdigest()[:16]


def _newer(cache: str, *inputs: str) -> bool:
    try:
        t = os.path.getmtime(cache)
    except OSError:
        return False
    return all(t >= os.path.getmtime(p) for p in inputs if p and os.path.exists(p))


def legacy_missing(stage: str, dataset_toml: Path, model: str | None) -> str | None:
    """None when the stage can be skipped, else why it must run."""
    datasets = load(str(dataset_toml))
    fp = legacy_fingerprint(stage, dataset_toml, model)
    for ds in datasets:
        mark_path = Path(ds.cache_directory) / LEGACY_MARK[stage]
        try:
            if json.loads(mark_path.read_text()).get("fingerprint") != fp:
                return f"the settings changed since {ds.cache_directory} was cached"
        except (OSError, ValueError):
            return f"no complete cache in {ds.cache_directory}"
        for item in items(ds):
            caption = os.path.splitext(item.media)[0] + ds.caption_extension
            if stage == "cache_latents":
                # the name carries a size (the image's own, or the video's bucket) and for video the crop:
                # any cache of this item will do, so the check holds for the real trainer's names too
                tail = "_*x*_wan.safetensors" if ds.is_image else "_*-*_*x*_wan.safetensors"
                found = glob.glob(os.path.join(glob.escape(ds.cache_directory), f"{glob.escape(item.stem)}{tail}"))
                ok = bool(found) and all(_newer(f, item.media) for f in found)
            else:
                ok = _newer(item.te_cache, item.media, caption)
            if not ok:
                changed = caption if stage != "cache_latents" and os.path.exists(caption) and \
                    _newer(item.media, caption) is False else item.media
                return f"{os.path.basename(changed)} is newer than its cache (or has none)"
    return None


def legacy_mark_done(stage: str, dataset_toml: Path, model: str | None) -> None:
    fp = legacy_fingerprint(stage, dataset_toml, model)
    for ds in load(str(dataset_toml)):
        mark_path = Path(ds.cache_directory) / LEGACY_MARK[stage]
        mark_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = mark_path.with_name(mark_path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": fp}))
        os.replace(tmp, mark_path)
