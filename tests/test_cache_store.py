"""The cache store's parts without a run: folder keys, per-item freshness and markers, leases across processes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_dataset, make_models
from kohyawan.cachestore import folder as cf
from kohyawan.cachestore import store
from kohyawan.cachestore.lease import EXCLUSIVE, SHARED, Leases
from kohyawan.config import profiles, render
from kohyawan.config.spec import Models
from kohyawan.trainer.cachefiles import load
from kohyawan.rehearse.standin import trainer_dir
from runtime_helpers import FAST, holder, release


# --- keys -----------------------------------------------------------------------------------------------

def _caches(tmp, sets=(), task="t2v-A14B", store_dir=None, data=None, models=None):
    data = data or (tmp / "data" if (tmp / "data").exists() else make_dataset(tmp / "data", images=3, videos=2))
    models = models or make_models(tmp / "models", task)
    spec = profiles.resolve("character", task=task, dataset_dir=data, models=Models(**models), sets=sets)
    plan = render.build_plan(spec, tmp / "out", cache_store=store_dir or tmp / "store")
    return {c["kind"]: c for c in plan.document["caches"]}


def test_training_settings_share_a_folder_and_what_changes_a_latent_does_not(tmp_path):
    base = _caches(tmp_path)
    same = _caches(tmp_path, sets=("network_dim=16", "learning_rate=3e-4", "max_train_epochs=3",
                                   'optimizer_type="adamw"', "num_repeats=2", "batch_size=2"))
    assert {k: c["cache_directory"] for k, c in same.items()} == {k: c["cache_directory"] for k, c in base.items()}
    frames = _caches(tmp_path, sets=("target_frames=[9]",))
    assert frames["image"]["cache_directory"] == base["image"]["cache_directory"]      # images have no frames
    assert frames["video"]["cache_directory"] != base["video"]["cache_directory"]
    assert frames["video"]["text_key"] == base["video"]["text_key"]                    # the text may be shared
    reso = _caches(tmp_path, sets=("resolution=[256,256]",))
    assert all(reso[k]["cache_directory"] != base[k]["cache_directory"] for k in base)
    captions = _caches(tmp_path, sets=('caption_extension=".caption"',))
    assert captions["image"]["text_key"] != base["image"]["text_key"]
    assert Path(base["image"]["cache_directory"]).name.startswith("data-images-")
    assert Path(base["image"]["cache_directory"]).parent == tmp_path / "store"


def test_i2v_and_another_vae_file_get_their_own_folders_a_copied_vae_does_not(tmp_path):
    base = _caches(tmp_path)
    models = make_models(tmp_path / "models")
    vae = Path(models["vae"])
    with open(vae, "rb") as fh:
        head = fh.read(1 << 20)
    assert vae.stat().st_size > len(head) and not head[8 + int.from_bytes(head[:8], "little"):].strip(b"\0")

    def sparse_copy(path, last=b""):
        # the stand-in holds zeros after its header: a sparse copy is byte for byte the same file
        path.parent.mkdir()
        path.write_bytes(head)
        os.truncate(path, vae.stat().st_size)
        if last:
            with open(path, "r+b") as fh:
                fh.seek(-len(last), os.SEEK_END)
                fh.write(last)
        return path

    copied = _caches(tmp_path, models={**models, "vae": sparse_copy(tmp_path / "elsewhere" / "vae.safetensors")})
    assert copied["image"]["cache_directory"] == base["image"]["cache_directory"]
    other = sparse_copy(tmp_path / "other" / "vae.safetensors", last=b"\x01")   # same size and header, other weights
    changed = _caches(tmp_path, models={**models, "vae": other})
    assert changed["image"]["cache_directory"] != base["image"]["cache_directory"]
    assert changed["image"]["text_key"] == base["image"]["text_key"]
    i2v = _caches(tmp_path, task="i2v-A14B", models=make_models(tmp_path / "i2v", "i2v-A14B"))
    assert i2v["image"]["latent"]["i2v"] is True and not base["image"]["latent"]["i2v"]


def test_the_dataset_identity_is_its_folder_not_its_contents(tmp_path):
    base = _caches(tmp_path)
    (tmp_path / "data" / "images" / "item999.png").write_bytes(b"\0")
    (tmp_path / "data" / "images" / "item999.txt").write_text("new")
    assert _caches(tmp_path)["image"]["cache_directory"] == base["image"]["cache_directory"]
    moved = tmp_path / "moved"
    os.rename(tmp_path / "data", moved)
    assert _caches(tmp_path, data=moved)["image"]["cache_directory"] != base["image"]["cache_directory"]


def test_without_a_store_a_plan_keeps_the_run_folders_own_cache(tmp_path):
    data = make_dataset(tmp_path / "data", images=2)
    spec = profiles.resolve("character", task="t2v-A14B", dataset_dir=data,
                            models=Models(**make_models(tmp_path / "models")))
    plan = render.build_plan(spec, tmp_path / "out")
    assert plan.document["caches"] == [{"dataset": 0, "kind": "image", "media": str(data / "images"),
                                        "cache_directory": str(tmp_path / "out" / "cache" / "00_images")}]
    assert not any("--skip_existing" in s.argv for s in plan.stages)


# --- one folder: survey, tidy, mark -----------------------------------------------------------------------

def _cached(tmp_path, n=3):
    """A dataset and its caches as the simulated scripts write them (no marker yet)."""
    from runtime_helpers import make_dataset as images_dataset

    data = images_dataset(tmp_path / "data", n=n)
    folder = tmp_path / "store" / "f"
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\n\n'
                    f'[[datasets]]\nimage_directory = "{data / "images"}"\ncache_directory = "{folder}"\n')
    for name in ("v", "t"):
        (tmp_path / name).write_bytes(b"x")
    env = {**os.environ, **FAST}
    for script, extra in (("wan_cache_latents.py", ["--vae", str(tmp_path / "v")]),
                          ("wan_cache_text_encoder_outputs.py", ["--t5", str(tmp_path / "t")])):
        subprocess.run([sys.executable, str(trainer_dir() / script), "--dataset_config", str(toml), *extra,
                        "--skip_existing"], env=env, check=True, capture_output=True, timeout=60)
    (ds,) = load(str(toml))
    return data, folder, ds


def test_whole_unvouched_files_are_adopted_and_a_marker_then_vouches(tmp_path):
    data, folder, ds = _cached(tmp_path)
    for stage in cf.MARKERS:
        found = cf.survey(stage, ds, folder, "k")
        assert sorted(found.adopt) == ["img 0", "img 1", "img 2"] and not found.missing and not found.remove
        assert not found.complete
        assert cf.mark(found, ds, "k") == 3
        assert cf.survey(stage, ds, folder, "k").complete
        assert not cf.survey(stage, ds, folder, "another key").complete      # a marker of another key


def test_cut_stale_and_orphaned_files_are_found_and_removed(tmp_path):
    data, folder, ds = _cached(tmp_path)
    for stage in cf.MARKERS:
        cf.mark(cf.survey(stage, ds, folder, "k"), ds, "k")
    cut = folder / "img 0_0064x0064_wan.safetensors"
    with open(cut, "r+b") as fh:
        fh.truncate(cut.stat().st_size - 10)
    images = data / "images"
    later = time.time() + 5
    os.utime(images / "img 1.png", (later, later))                 # replaced media: its latent is stale
    (images / "img 2.txt").write_text("a new caption")             # a new caption: its text is stale
    (images / "img 9.png").write_bytes((images / "img 0.png").read_bytes())   # a new item
    (images / "img 9.txt").write_text("new")
    (folder / "gone_0064x0064_wan.safetensors").write_bytes(cut.read_bytes())  # media removed long ago
    latents = cf.survey("cache_latents", ds, folder, "k")
    assert sorted(latents.missing) == ["img 0", "img 1", "img 9"]
    assert latents.remove == {"img 1_0064x0064_wan.safetensors": "its input changed",
                              "img 0_0064x0064_wan.safetensors": "damaged (cut short or unreadable)",
                              "gone_0064x0064_wan.safetensors": "not in the dataset"}
    assert "3 of 4 item(s) to cache" in latents.reason()
    text = cf.survey("cache_text_encoder", ds, folder, "k")
    assert sorted(text.missing) == ["img 2", "img 9"] and text.remove == {"img 2_wan_te.safetensors": "its input changed"}
    assert sorted(cf.tidy(latents)) == sorted(latents.remove)
    assert not cut.exists() and (folder / "img 2_0064x0064_wan.safetensors").exists()


def test_an_unvouched_text_cache_of_another_caption_is_stale_by_its_recorded_caption(tmp_path):
    data, folder, ds = _cached(tmp_path)
    (data / "images" / "img 1.txt").write_text("changed before any marker was written")
    os.utime(data / "images" / "img 1.txt", (1, 1))                # even with an old mtime
    found = cf.survey("cache_text_encoder", ds, folder, "k")
    assert found.remove == {"img 1_wan_te.safetensors": "its caption changed"} and found.missing == ["img 1"]


def test_recache_clears_the_marker_first(tmp_path):
    data, folder, ds = _cached(tmp_path)
    cf.mark(cf.survey("cache_latents", ds, folder, "k"), ds, "k")
    assert cf.clear("cache_latents", folder, True) == 3
    assert not (folder / cf.MARKERS["cache_latents"]).exists() and not list(folder.glob("*_wan.safetensors"))
    assert len(list(folder.glob("*_wan_te.safetensors"))) == 3


def test_text_caches_are_borrowed_only_whole_and_for_the_same_caption(tmp_path):
    data, folder, ds = _cached(tmp_path)
    doc = {"key": "a", "text_key": "T", "kind": "image", "media": str(data / "images")}
    (folder / cf.KEY_DOCUMENT).write_text(json.dumps(doc))
    new = folder.parent / "g"
    new.mkdir()
    with open(folder / "img 2_wan_te.safetensors", "r+b") as fh:
        fh.truncate(100)
    captions = {f"img {i}": f"a photo of sks person, pose {i}" for i in range(3)}
    captions["img 1"] = "another caption"
    assert store.borrow_text(new, "T", captions, ["img 0", "img 1", "img 2"]) == ["img 0"]
    assert store.borrow_text(new, "other", captions, ["img 0"]) == []
    assert sorted(p.name for p in new.iterdir()) == ["img 0_wan_te.safetensors"]


# --- leases across processes ------------------------------------------------------------------------------

HOLD = ("import sys, time; from pathlib import Path; from kohyawan.cachestore.lease import Leases\n"
        "l = Leases(); assert l.try_all([Path(sys.argv[1])], shared=sys.argv[2] == 'shared')\n"
        "print('held', flush=True); sys.stdin.readline()\n")


def _hold(folder, how):
    return holder(HOLD, folder, how)


def test_trainers_share_a_folder_and_a_writer_waits_for_them(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    trainer = _hold(a, "shared")
    try:
        mine = Leases()
        assert mine.try_all([a, b], shared=True) and sorted(mine.held) == [a, b]
        mine.release_all()
        assert not mine.try_all([b, a], shared=False) and not mine.held       # all or none
        assert mine.try_all([b], shared=False)                                   # b alone is free
        mine.release_all()
        waited = []
        assert mine.settle([a], lambda: True, lambda: waited.append(1)) == SHARED and not waited
        mine.release_all()
    finally:
        release(trainer)
    assert Leases().settle([a], lambda: False, lambda: None) == EXCLUSIVE


def test_a_writer_keeps_others_out_until_it_is_done(tmp_path):
    writer = _hold(tmp_path / "a", "exclusive")
    mine = Leases(poll_s=0.01)
    told = []
    done = {"now": False}
    import threading

    def finish():
        time.sleep(0.5)
        done["now"] = True
        release(writer)

    threading.Thread(target=finish).start()
    t0 = time.monotonic()
    assert mine.settle([tmp_path / "a"], lambda: done["now"], lambda: told.append(1)) == SHARED
    assert time.monotonic() - t0 >= 0.4 and told == [1]
    mine.release_all()


def test_a_folder_moved_away_while_waiting_is_never_held(tmp_path):
    folder = tmp_path / "a"
    mine = Leases()
    assert mine.try_all([folder], shared=True)
    os.rename(folder, tmp_path / "gone")        # what cache prune does after taking the lock
    held = mine.held[folder]
    from kohyawan.cachestore.lease import _still_there

    assert not _still_there(held)
    mine.release_all()
    assert mine.try_all([folder], shared=True) and (folder / ".lock").exists()
    mine.release_all()


@pytest.mark.parametrize("age,seconds", [("30d", 30 * 86400.0), ("12h", 43200.0), ("90m", 5400.0), ("2", 172800.0),
                                         ("1.5d", 129600.0)])
def test_ages(age, seconds):
    from kohyawan.commands.cache import parse_age

    assert parse_age(age) == seconds


# --- the simulated scripts follow musubi's --skip_existing / --keep_cache rules ------------------------------

def _script(tmp_path, script, *extra, log=None):
    env = {**os.environ, **FAST, **({"KOHYAWAN_REHEARSE_CACHE_LOG": str(log)} if log else {})}
    model = ["--vae", str(tmp_path / "v")] if script == "wan_cache_latents.py" else ["--t5", str(tmp_path / "t")]
    return subprocess.run([sys.executable, str(trainer_dir() / script), "--dataset_config",
                           str(tmp_path / "dataset.toml"), *model, *extra], env=env, capture_output=True, text=True,
                          timeout=60)


def test_simulated_scripts_skip_existing_files_even_cut_ones_and_remove_what_is_not_in_the_dataset(tmp_path):
    data, folder, ds = _cached(tmp_path)
    log = tmp_path / "log.jsonl"
    cut = folder / "img 0_0064x0064_wan.safetensors"
    with open(cut, "r+b") as fh:
        fh.truncate(50)
    stray = folder / "gone_0064x0064_wan.safetensors"
    stray.write_bytes(b"x")
    stray_text = folder / "gone_wan_te.safetensors"
    stray_text.write_bytes(b"x")
    r = _script(tmp_path, "wan_cache_latents.py", "--skip_existing", "--keep_cache", log=log)
    assert r.returncode == 0 and "Keep cache file not in the dataset" in r.stderr and stray.exists()
    assert cut.stat().st_size == 50               # --skip_existing asks only whether the file exists
    r = _script(tmp_path, "wan_cache_latents.py", "--skip_existing", log=log)
    assert r.returncode == 0 and f"Removed old cache file: {stray}" in r.stderr and not stray.exists()
    assert "encoded 0 item(s), skipped 3 existing, removed 1 old cache file(s)" in r.stderr
    r = _script(tmp_path, "wan_cache_latents.py", log=log)      # without it every item is encoded again
    assert "encoded 3 item(s)" in r.stderr and cf.whole(cut)[0]
    with open(folder / "img 1_wan_te.safetensors", "r+b") as fh:
        fh.truncate(50)
    r = _script(tmp_path, "wan_cache_text_encoder_outputs.py", log=log)   # musubi reads an old file to merge it
    assert r.returncode == 1 and "SafetensorError" in r.stderr
    r = _script(tmp_path, "wan_cache_text_encoder_outputs.py", "--skip_existing", log=log)
    assert r.returncode == 0 and not stray_text.exists() and "encoded 0 item(s)" in r.stderr
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events.count("start") == 5 and events.count("encoded") == 3 + 1   # img 0 of the failed text run


def test_a_run_that_named_the_store_through_a_symlink_still_refers_to_its_folder(tmp_path):
    """prune must never take a folder a run lists, whatever spelling of the store's path the run used."""
    real = tmp_path / "disk" / "store" / "sarah-images-0123"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"caches": [{"cache_directory": str(tmp_path / "link" / "store" /
                                                                                  "sarah-images-0123")}]}))
    assert store.refers(str(run), real)
    assert not store.refers(str(run), tmp_path / "disk" / "store" / "other")
    assert not store.refers(str(tmp_path / "gone"), real)
