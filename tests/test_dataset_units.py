"""Pure parts of dataset prep: settings, clip planning, names, captions, size targets, dataset.toml."""

import numpy as np
import pytest

from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10
from kohyawan.dataset import captions, layout, plan, quality
from kohyawan.dataset.report import size_check
from kohyawan.dataset.settings import Settings, settings_from, size_targets
from kohyawan.errors import ConfigError


def test_settings_overrides_are_validated():
    s = settings_from({"blur_threshold": 0.02, "frames": [25, 17], "crf": 16})
    assert s.blur_threshold == 0.02 and s.frames == (17, 25) and s.crf == 16
    with pytest.raises(ConfigError, match="did you mean 'blur_threshold'"):
        settings_from({"blur_treshold": 1})
    with pytest.raises(ConfigError, match="4n\\+1"):
        settings_from({"frames": [16]})
    with pytest.raises(ConfigError, match="integer"):
        settings_from({"crf": "14"})
    with pytest.raises(ConfigError, match="multiple of 16"):
        settings_from({"resolution": 500})
    assert Settings().fingerprint() != settings_from({"fps": 24}).fingerprint()
    # size targets do not change any output, so they must not force re-encoding
    assert Settings().fingerprint() == settings_from({"min_clips": 5}).fingerprint()


def test_split_segment_takes_the_longest_length_that_fits():
    pieces, left = plan.split_segment(0, 60, (17, 21, 25))
    assert [(p.start, p.frames) for p in pieces] == [(0, 25), (25, 25)] and left == 10
    pieces, left = plan.split_segment(10, 31, (17, 21, 25))
    assert [(p.start, p.frames) for p in pieces] == [(10, 21)] and left == 0
    pieces, left = plan.split_segment(0, 16, (17,))
    assert pieces == [] and left == 16
    for n in range(0, 200, 7):
        pieces, left = plan.split_segment(0, n, (17, 21, 25))
        assert all((p.frames - 1) % 4 == 0 for p in pieces)
        assert sum(p.frames for p in pieces) + left == n and left < 17 + 25


def test_segments_need_both_a_histogram_jump_and_a_structure_break():
    cuts = [0.1, 0.9, 0.1, 0.9]
    sim = [0.9, 0.1, 0.9, 0.95]  # step 3 is a fade: histogram jumps, structure stays
    assert plan.segments(5, cuts, 0.5, sim, 0.4) == [(0, 2), (2, 5)]


def test_safe_stem_is_stable_unique_and_safe():
    names = ["a b.mp4", "a_b.mp4", "a\nb.mp4", "$(rm -rf ~)'\".mp4", "café/日本.mp4", "-x.mp4", "dir/a b.mp4"]
    stems = [layout.safe_stem(n) for n in names]
    assert len(set(stems)) == len(stems)
    assert all(s and all(c.isalnum() and c.isascii() or c in "_-" for c in s) for s in stems)
    assert layout.safe_stem("a b.mp4") == layout.safe_stem("a b.mp4")
    assert not any(s.startswith("-") for s in stems)


def test_caption_normalisation():
    c = captions.normalise("  a  man\nwalking \n", "ohwx", 512)
    assert c.text == "ohwx, a man walking" and c.reason is None
    assert captions.normalise("ohwx, a man", "ohwx", 512).text == "ohwx, a man"  # once, at the front
    assert captions.normalise(" \n\t", None, 512).reason == "empty_caption"
    long = captions.normalise("word " * 600, None, 512)
    assert long.text and any(n.startswith("caption_long") for n in long.notes)


def test_caption_file_encodings(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 latin-1")
    assert captions.load(bad, None, 512).reason == "caption_encoding"
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffsmile".encode("utf-8"))
    assert captions.load(bom, None, 512).text == "smile"
    assert captions.load(None, None, 512).reason == "missing_caption"


def test_size_check_against_profile_targets():
    targets = size_targets(Settings(), "character")
    assert targets["min_images"] == 150 and targets["min_clips"] == 30
    assert size_check(10, 5, targets)["status"] == "below_minimum"
    assert size_check(160, 0, targets)["status"] == "enough"
    assert size_check(0, 31, targets)["status"] == "enough"
    assert size_check(0, 250, size_targets(Settings(), "motion"))["status"] == "below_minimum"
    assert size_targets(settings_from({"min_clips": 3}), "motion")["min_clips"] == 3
    assert size_check(1, 1, {})["status"] == "unknown"


def test_output_size_square_and_keep_aspect():
    assert plan.output_size(1920, 1080, Settings()) == (512, 512)
    w, h = plan.output_size(1920, 1080, settings_from({"keep_aspect": True}))
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 16 / 9) < 0.1 and abs(w * h - 512 * 512) < 0.1 * 512 * 512


def test_dataset_toml_types_and_layout(tmp_path):
    path = layout.write_dataset_toml(tmp_path, resolution=[512, 512], target_frames=[25, 17, 21],
                                     frame_extraction="full")
    doc = tomllib.loads(path.read_text())
    assert set(doc) == {"general", "datasets"}
    assert doc["general"]["resolution"] == [512, 512] and doc["general"]["enable_bucket"] is False
    video = [d for d in doc["datasets"] if "video_directory" in d][0]
    assert video["target_frames"] == [17, 21, 25] and video["frame_extraction"] == "full"
    caches = [d["cache_directory"] for d in doc["datasets"]]
    assert len(caches) == len(set(caches)) == 2
    with pytest.raises(ValueError):
        layout.write_dataset_toml(tmp_path, resolution=512, target_frames=[16])


def test_sharpness_and_hash_measures():
    rng = np.random.default_rng(0)
    img = rng.random((128, 128)).astype(np.float32)
    smooth = np.cumsum(np.cumsum(img, 0), 1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    assert quality.sharpness(img) > 1.0 > 0.01 > quality.sharpness(smooth)
    assert quality.sharpness(np.zeros((64, 64), np.float32)) is None
    assert quality.hamming(quality.dhash(img), quality.dhash(img * 0.5 + 0.2)) == 0
    assert quality.hamming(quality.dhash(img), quality.dhash(img[::-1].copy())) > 10
    a = quality.thumbnail(smooth)
    b = np.roll(a, 3, axis=1)
    dy, dx = quality.shift_between(a, b)
    assert abs(dx - 3) < 0.5 and abs(dy) < 0.5


def test_duplicates_keep_the_bigger_then_lossless_copy():
    def item(rel, w, sharp, h=0xF0F0F0F0F0F0F0F0):
        return {"rel": rel, "probe": {"width": w, "height": w, "sharpness": [[0, sharp]], "dhash": h}}
    images = [item("a.jpg", 640, 0.5), item("b.png", 640, 0.3), item("c.png", 320, 0.9),
              item("d.png", 640, 0.3, h=0x0F0F0F0F0F0F0F0F)]
    assert plan.find_duplicates(images, 4) == {"a.jpg": "b.png", "c.png": "b.png"}
