"""The shared cache store end to end: real `kohyawan run`, sweep and batch processes against the simulated
trainer, whose cache scripts log every start and every item they encode (KOHYAWAN_REHEARSE_CACHE_LOG)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runtime_helpers import base_args, env, ledger, make_dataset, run_cli, wait_for

pytestmark = pytest.mark.slow

LATENTS, TEXT = "wan_cache_latents", "wan_cache_text_encoder_outputs"


class CacheLog:
    """What the simulated cache scripts did, from their JSON log."""

    def __init__(self, path: Path):
        self.path = path

    def records(self):
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def starts(self, script):
        return [r for r in self.records() if r["script"] == script and r["event"] == "start"]

    def encoded(self, script, pid=None):
        return [Path(r["file"]).name for r in self.records()
                if r["script"] == script and r["event"] == "encoded" and (pid is None or r["pid"] == pid)]

    def mark(self):
        """Records from here on (``since``)."""
        return len(self.records())

    def since(self, mark, script, event="encoded"):
        return [r for r in self.records()[mark:] if r["script"] == script and r["event"] == event]


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "cache-log.jsonl"
    monkeypatch.setenv("KOHYAWAN_REHEARSE_CACHE_LOG", str(path))
    return CacheLog(path)


def _store_folders(runs):
    return sorted(p for p in (runs / ".cache").iterdir() if p.is_dir() and not p.name.startswith("."))


def _whole(folder):
    from kohyawan.cachestore.folder import whole

    return {p.name: whole(p)[0] for p in folder.glob("*.safetensors")}


def test_two_runs_of_one_dataset_cache_once_and_name_their_cache(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    first = run_cli(base_args(data, runs, "first"))
    assert first.returncode == 0, first.stderr
    second = run_cli(base_args(data, runs, "second", "--set", "network_dim=8", "--set", "learning_rate=3e-4",
                               "--set", "max_train_epochs=3", "--set", 'optimizer_type="adamw"'))
    assert second.returncode == 0, second.stderr
    assert len(log.starts(LATENTS)) == len(log.starts(TEXT)) == 1
    assert sorted(log.encoded(LATENTS)) == [f"img {i}_0064x0064_wan.safetensors" for i in range(4)]
    assert sorted(log.encoded(TEXT)) == [f"img {i}_wan_te.safetensors" for i in range(4)]
    (folder,) = _store_folders(runs)
    for name in ("first", "second"):
        d = ledger(runs, name)
        assert [c["cache_directory"] for c in d["caches"]] == [str(folder)]
        plan = json.loads((runs / name / "plan.json").read_text())
        assert [c["cache_directory"] for c in plan["caches"]] == [str(folder)]
        assert f'cache_directory = "{folder}"' in (runs / name / "dataset.toml").read_text()
    stages = {s["name"]: s["status"] for s in ledger(runs, "second")["stages"]}
    assert stages["cache_latents"] == stages["cache_text_encoder"] == "skipped"
    assert "cache_latents: skipped (caches complete in" in second.stderr
    shown = run_cli([sys.executable, "-m", "kohyawan", "runs", "show", "second", "--runs-dir", str(runs)])
    assert f"cache: {folder} (images of {data / 'images'})" in shown.stdout
    assert all(_whole(folder).values()) and len(_whole(folder)) == 8


def test_a_changed_caption_a_removed_file_and_a_removed_item_redo_exactly_those(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    assert run_cli(base_args(data, runs, "a")).returncode == 0
    (folder,) = _store_folders(runs)
    (data / "images" / "img 1.txt").write_text("a photo of sks person, new hair")
    (folder / "img 2_0064x0064_wan.safetensors").unlink()       # the marker still lists it: not trusted
    (data / "images" / "img 3.png").unlink()
    (data / "images" / "img 3.txt").unlink()
    mark = log.mark()
    r = run_cli(base_args(data, runs, "b"))
    assert r.returncode == 0, r.stderr
    assert [Path(x["file"]).name for x in log.since(mark, LATENTS)] == ["img 2_0064x0064_wan.safetensors"]
    assert [Path(x["file"]).name for x in log.since(mark, TEXT)] == ["img 1_wan_te.safetensors"]
    # the removed item's caches are gone: training globs the folder and would train on them
    assert not list(folder.glob("img 3_*"))
    from kohyawan.lora.io import read_metadata

    assert read_metadata(str(folder / "img 1_wan_te.safetensors"))["caption1"] == "a photo of sks person, new hair"


def test_recache_forces_both_stages_again(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    assert run_cli(base_args(data, runs, "a")).returncode == 0
    mark = log.mark()
    r = run_cli(base_args(data, runs, "b", "--recache"))
    assert r.returncode == 0, r.stderr
    assert len(log.since(mark, LATENTS, "start")) == len(log.since(mark, TEXT, "start")) == 1
    assert len(log.since(mark, LATENTS)) == len(log.since(mark, TEXT)) == 4
    assert "cache_latents: running (forced (--recache))" in r.stderr


def test_a_cache_killed_half_way_is_redone_and_its_cut_file_never_trusted(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "cut"), KOHYAWAN_REHEARSE_CACHE_KILL="3")
    assert r.returncode == 1 and "cache_latents failed" in r.stderr
    (folder,) = _store_folders(runs)
    assert _whole(folder) == {"img 0_0064x0064_wan.safetensors": True, "img 1_0064x0064_wan.safetensors": True,
                              "img 2_0064x0064_wan.safetensors": False}   # cut in half, as a kill leaves it
    assert not (folder / ".complete-latents.json").exists()
    mark = log.mark()
    r = run_cli([sys.executable, "-m", "kohyawan", "runs", "resume", "cut", "--runs-dir", str(runs), "--plain"])
    assert r.returncode == 0, r.stderr
    # the cut file was removed first (--skip_existing would have kept it), the whole ones were not redone
    assert sorted(Path(x["file"]).name for x in log.since(mark, LATENTS)) == [
        "img 2_0064x0064_wan.safetensors", "img 3_0064x0064_wan.safetensors"]
    assert len(log.since(mark, TEXT)) == 4
    assert all(_whole(folder).values()) and len(_whole(folder)) == 8
    assert ledger(runs, "cut")["status"] == "succeeded"


def test_a_cache_script_that_succeeds_and_leaves_an_item_out_stops_the_run_once(tmp_path, log):
    """musubi leaves out a clip shorter than every target frame count and still exits 0: running it again
    would leave it out again, so the run stops and says what is missing instead of relaunching the encoder."""
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    mark = log.mark()
    r = run_cli(base_args(data, runs, "gap"), KOHYAWAN_REHEARSE_CACHE_SKIP="2", timeout=60)
    assert r.returncode == 1
    assert "cache_latents: the cache script finished but the cache is still incomplete (" in r.stderr
    assert ": 1 of 4 item(s) to cache); see the stage's log" in r.stderr
    assert len([x for x in log.since(mark, LATENTS)]) == 3                 # one launch, three items encoded
    assert ledger(runs, "gap")["status"] == "failed"


def test_two_concurrent_runs_make_one_complete_cache_and_both_train(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    slow = env(KOHYAWAN_REHEARSE_CACHE_S="0.4", KOHYAWAN_REHEARSE_CACHE_LOG=str(log.path))
    first = subprocess.Popen(base_args(data, runs, "one"), env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    wait_for(lambda: log.starts(LATENTS), timeout=60)     # the first run is writing the cache now
    second = subprocess.Popen(base_args(data, runs, "two", "--set", "network_dim=8"), env=slow,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=180)
    out2, err2 = second.communicate(timeout=180)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert len(log.starts(LATENTS)) == len(log.starts(TEXT)) == 1
    assert len(log.encoded(LATENTS)) == len(set(log.encoded(LATENTS))) == 4
    assert len(log.encoded(TEXT)) == 4
    assert "waiting for" in err2 and "another run is writing it or training from it" in err2
    (folder,) = _store_folders(runs)
    assert all(_whole(folder).values()) and len(_whole(folder)) == 8
    for name in ("one", "two"):
        assert ledger(runs, name)["status"] == "succeeded"


def test_a_sweep_of_three_variants_caches_once(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    r = run_cli([sys.executable, "-m", "kohyawan", "sweep", "--profile", "character", "--dataset", str(data),
                 "--task", "t2v-1.3B", "--variants", "conservative,standard,aggressive", "--rehearse",
                 "--runs-dir", str(runs), "--name", "sw", "--set", "max_train_epochs=2",
                 "--set", "resolution=[64,64]", "--json"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert [v["state"] for v in json.loads(r.stdout)["variants"]] == ["succeeded"] * 3
    assert len(log.starts(LATENTS)) == len(log.starts(TEXT)) == 1
    (folder,) = _store_folders(runs)
    for variant in ("conservative", "standard", "aggressive"):
        assert [c["cache_directory"] for c in ledger(runs, f"sw-{variant}")["caches"]] == [str(folder)]


MANIFEST = """
[defaults]
profile = "character"
task = "t2v-1.3B"
rehearse = true
export = false
overrides = { max_train_epochs = 1, resolution = [64, 64] }

[[jobs]]
client = "brand-x"
name = "sarah"
dataset = "data/sarah"

[[jobs]]
client = "brand-x"
name = "tom"
dataset = "data/tom"
"""


def test_a_batch_retraining_a_client_with_3_new_items_caches_exactly_those(tmp_path, log, monkeypatch):
    from batchkit import CLI, FAST_ENV, write_manifest
    from kohyawan.batch import driver

    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    path = write_manifest(tmp_path, MANIFEST, datasets=("sarah", "tom"))
    first = driver.run(driver.BatchOptions(manifest=path, kohyawan=CLI))
    assert first["counts"]["succeeded"] == 2
    assert len(log.starts(LATENTS)) == len(log.starts(TEXT)) == 2          # one run per client
    assert len(log.encoded(LATENTS)) == 3 + 4 and len(log.encoded(TEXT)) == 3 + 4
    images = tmp_path / "data" / "sarah" / "images"
    from PIL import Image

    for i in range(3):   # real images: the rehearsal's cacher decodes what it encodes, as musubi's does
        Image.new("RGB", (64, 64), (10, 30 * i, 10)).save(images / f"new{i}.png")
        (images / f"new{i}.txt").write_text(f"sarah with new hair {i}")
    mark = log.mark()
    # next month: a new batch folder (so a new runs folder); the store beside the manifest is the same
    second = driver.run(driver.BatchOptions(manifest=path, kohyawan=CLI, folder=tmp_path / "retrain"))
    assert second["counts"]["succeeded"] == 2
    assert sorted(Path(x["file"]).name.split("_")[0] for x in log.since(mark, LATENTS)) == ["new0", "new1", "new2"]
    assert sorted(Path(x["file"]).name for x in log.since(mark, TEXT)) == [
        f"new{i}_wan_te.safetensors" for i in range(3)]
    assert len(log.since(mark, LATENTS, "start")) == 1                    # tom's run started no cache script
    tom = next(j for j in second["jobs"] if j["key"] == "brand-x/tom")
    stages = {s["name"]: s["status"] for s in json.loads(Path(tom["run_dir"], "run.json").read_text())["stages"]}
    assert stages["cache_latents"] == stages["cache_text_encoder"] == "skipped"
    assert Path(tom["run_dir"]).parent == tmp_path / "retrain" / "runs"
    assert (tmp_path / ".kohyawan-cache").is_dir()


def test_a_frames_rung_gets_its_own_latents_borrows_the_text_and_the_old_setting_finds_its_folder(tmp_path, log):
    import media

    data = make_dataset(tmp_path / "data", n=2)
    videos = data / "videos"
    videos.mkdir()
    for i in range(2):
        media.video(videos / f"clip{i}.mp4", size="64x64", rate=16, seconds=1.2)
        (videos / f"clip{i}.txt").write_text(f"a clip {i}")
    runs = tmp_path / "runs"
    frames = ("--set", "target_frames=[17]", "--set", 'ladder.vram=["fewer_frames"]')
    r = run_cli(base_args(data, runs, "frames", *frames), KOHYAWAN_REHEARSE_FAULTS="oom@3",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "frames")
    assert [a["rung"] for a in d["attempts"]] == [None, "fewer_frames"]
    folders = [Path(c["cache_directory"]) for c in d["caches"]]
    video_folders = [f for f in folders if "videos" in f.name]
    assert len(folders) == 3 and len(video_folders) == 2                  # images once; videos at 17 and fewer
    assert all("-017_" in p.name for p in video_folders[0].glob("clip*_wan.safetensors"))
    assert not any("-017_" in p.name for p in video_folders[1].glob("clip*_wan.safetensors"))
    assert len(log.starts(LATENTS)) == 2 and len(log.starts(TEXT)) == 1   # the rung's text caches were borrowed
    assert sorted(p.name for p in video_folders[1].glob("*_wan_te.safetensors")) == [
        "clip0_wan_te.safetensors", "clip1_wan_te.safetensors"]
    mark = log.mark()
    r = run_cli(base_args(data, runs, "again", "--set", "target_frames=[17]"))
    assert r.returncode == 0, r.stderr
    assert not log.since(mark, LATENTS, "start") and not log.since(mark, TEXT, "start")
    assert {c["cache_directory"] for c in ledger(runs, "again")["caches"]} == {str(folders[0]), str(video_folders[0])}


def test_config_render_points_a_manual_run_at_the_same_store_folder(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    assert run_cli(base_args(data, runs, "a")).returncode == 0
    models = runs / ".rehearsal-models" / "t2v-1.3B"
    r = run_cli([sys.executable, "-m", "kohyawan", "config", "render", "--profile", "character", "--dataset",
                 str(data), "--task", "t2v-1.3B", "--out", str(tmp_path / "cfg"), "--cache-dir", str(runs / ".cache"),
                 "--dit", str(models / "wan2.1_t2v_1.3B_bf16.safetensors"),
                 "--vae", str(models / "wan_2.1_vae.safetensors"),
                 "--t5", str(models / "models_t5_umt5-xxl-enc-bf16.safetensors"),
                 "--set", "resolution=[64,64]", "--set", "max_train_epochs=9"])
    assert r.returncode == 0, r.stderr
    (folder,) = _store_folders(runs)
    assert f'cache_directory = "{folder}"' in (tmp_path / "cfg" / "dataset.toml").read_text()
    commands = (tmp_path / "cfg" / "commands.sh").read_text()
    assert commands.count("    --skip_existing\n") == 2 and "--keep_cache" not in commands


def _old_run(tmp_path, data, runs, name):
    """A run folder laid out as before the store (its own cache/), made by the library with no store."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from kohyawan.commands.common import resolve_spec\n"
        "from kohyawan.run import runsetup\nfrom kohyawan.run.options import RunOptions\n"
        "data, runs, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]\n"
        "sets = ('max_train_epochs=5', 'save_every_n_steps=5', 'resolution=[64,64]')\n"
        "spec = resolve_spec('character', data, 't2v-1.3B', None, None, None, None, None, None, sets)\n"
        "request = {'profile': 'character', 'dataset': str(data), 'task': 't2v-1.3B', 'expert': None,\n"
        "           'variant': None, 'sets': list(sets)}\n"
        "opts = RunOptions(runs_dir=runs, name=name, rehearse=True, max_attempts=1, live=False,\n"
        "                  plain_interval_s=1000)\n"
        "runsetup.new_run(spec, request, opts).drive()\n")
    return subprocess.run([sys.executable, "-c", script, str(data), str(runs), name], env=env(
        KOHYAWAN_REHEARSE_FAULTS="crash@7"), capture_output=True, text=True, timeout=120)


def test_a_run_folder_with_its_own_caches_resumes_and_exports_as_before(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    r = _old_run(tmp_path, data, runs, "old")
    d = ledger(runs, "old")
    assert d["status"] == "failed", r.stderr
    assert d["options"].pop("cache_dir") is None                         # run.json as runs wrote it before
    (runs / "old" / "run.json").write_text(json.dumps(d, indent=2))
    own = runs / "old" / "cache" / "00_images"
    assert (own / ".kohyawan-latents.json").is_file() and "caches" not in d
    mark = log.mark()
    r = run_cli([sys.executable, "-m", "kohyawan", "runs", "resume", "old", "--runs-dir", str(runs), "--plain"])
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "old")
    assert d["status"] == "succeeded" and d["attempts"][-1]["steps"] == [5, 20]
    assert not log.since(mark, LATENTS, "start") and not log.since(mark, TEXT, "start")
    assert f'cache_directory = "{own}"' in (runs / "old" / "dataset.toml").read_text()
    assert not (runs / ".cache").exists()
    e = run_cli([sys.executable, "-m", "kohyawan", "export", str(runs / "old"), "--name", "old", "--kind",
                 "character", "--client", "demo", "--registry", str(tmp_path / "registry"), "--json"])
    assert e.returncode == 0, e.stderr


def test_cache_list_and_prune(tmp_path, log):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        assert run_cli(base_args(data, runs, name)).returncode == 0
    cli = [sys.executable, "-m", "kohyawan", "cache"]
    listed = json.loads(run_cli([*cli, "list", "--runs-dir", str(runs), "--json"]).stdout)
    (row,) = listed["folders"]
    assert [u["run_id"] for u in row["runs"]] == ["a", "b"] and row["referred"] and not row["in_use"]
    assert row["media"] == str(data / "images") and row["latent_items"] == row["text_items"] == 4
    assert row["bytes"] == sum(p.stat().st_size for p in Path(row["folder"]).glob("*.safetensors"))
    import shutil

    shutil.rmtree(runs / "a")
    assert json.loads(run_cli([*cli, "prune", "--runs-dir", str(runs), "--json"]).stdout)["folders"] == []
    shutil.rmtree(runs / "b")
    dry = json.loads(run_cli([*cli, "prune", "--runs-dir", str(runs), "--dry-run", "--json"]).stdout)
    assert [f["folder"] for f in dry["folders"]] == [row["folder"]] and Path(row["folder"]).is_dir()
    old = run_cli([*cli, "prune", "--runs-dir", str(runs), "--older-than", "30d"])
    assert "nothing to prune" in old.stdout and Path(row["folder"]).is_dir()
    from kohyawan.cachestore.lease import Leases

    held = Leases()
    assert held.try_all([Path(row["folder"])], shared=True)              # a run training from it right now
    try:
        kept = run_cli([*cli, "prune", "--runs-dir", str(runs)])
        assert Path(row["folder"]).is_dir() and "nothing to prune" in kept.stdout
    finally:
        held.release_all()
    gone = run_cli([*cli, "prune", "--runs-dir", str(runs)])
    assert gone.returncode == 0 and f"removed {Path(row['folder']).name}" in gone.stdout
    assert not Path(row["folder"]).exists() and not list((runs / ".cache").iterdir())
    bad = run_cli([*cli, "prune", "--runs-dir", str(runs), "--older-than", "soon"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: --older-than 'soon'")


def test_a_run_waiting_for_a_folder_stops_cleanly_on_ctrl_c_and_resumes(tmp_path, log):
    import signal

    from kohyawan.cachestore.lease import Leases

    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    assert run_cli(base_args(data, runs, "a")).returncode == 0
    (folder,) = _store_folders(runs)
    writer = Leases()
    assert writer.try_all([folder], shared=False)          # another run writing into it, for as long as we like
    try:
        proc = subprocess.Popen(base_args(data, runs, "b"), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        lines = []

        def read():
            for line in proc.stderr:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: any("cache_latents: waiting for" in line for line in lines))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        writer.release_all()
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert ledger(runs, "b")["status"] == "stopped"
    r = run_cli([sys.executable, "-m", "kohyawan", "runs", "resume", "b", "--runs-dir", str(runs), "--plain"])
    assert r.returncode == 0, r.stderr
    assert len(log.starts(LATENTS)) == 1                    # the resumed run found the cache complete
