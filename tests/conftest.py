import os
import sys

import pytest


@pytest.fixture
def kohyawan_argv():
    """The kohyawan CLI as a real process (the same interpreter that runs the tests)."""
    return [sys.executable, "-m", "kohyawan"]


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    # Never read or write the developer's own config, profiles or registry.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("KOHYAWAN_REGISTRY", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    yield


def tiny_png(index: int) -> bytes:
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (64, 64), (37 * index % 256, 90, 160)).save(data, "PNG")
    return data.getvalue()


def make_dataset(root, images=3, videos=0, caption=True):
    """A dataset folder in the trainer's layout. Images are real 64x64 PNGs (a rehearsal decodes them, as the
    trainer does); clips are one byte (planning does not decode them; a rehearsal would refuse them)."""
    from pathlib import Path

    root = Path(root)
    for kind, n, ext in (("images", images, ".png"), ("videos", videos, ".mp4")):
        if not n:
            continue
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"item{i:03d}{ext}").write_bytes(tiny_png(i) if ext == ".png" else b"\0")
            if caption:
                (folder / f"item{i:03d}.txt").write_text(f"a caption {i}\n", encoding="utf-8")
    return root


def make_models(folder, task="t2v-A14B"):
    """Model files with real headers (sparse, full length) for the task."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variant = "i2v" if task.startswith("i2v") else "t2v"
    family = "wan2.2" if "A14B" in task else "wan2.1"
    size = "1.3B" if "1.3B" in task else "14B"
    names = {"dit": f"wan2.2_{variant}_low_noise_14B_fp16.safetensors",
             "dit_high_noise": f"wan2.2_{variant}_high_noise_14B_fp16.safetensors",
             "vae": "wan_2.1_vae.safetensors", "t5": "models_t5_umt5-xxl-enc-bf16.safetensors"}
    paths = {role: folder / name for role, name in names.items()}
    try:
        from kohyawan.modelfiles import standins as fabricate
    except ImportError:
        for p in paths.values():
            p.write_bytes(b"")
        return paths
    fabricate.write_dit(paths["dit"], size=size, variant=variant, family=family, dtype="fp16")
    fabricate.write_dit(paths["dit_high_noise"], size=size, variant=variant, family=family, dtype="fp16")
    fabricate.write_vae(paths["vae"], version="2.1")
    fabricate.write_t5(paths["t5"], fmt="wan")
    return paths


@pytest.fixture
def dataset_dir(tmp_path):
    return make_dataset(tmp_path / "data", images=3, videos=2)


@pytest.fixture
def model_files(tmp_path):
    return make_models(tmp_path / "models")
