"""The workload from the data itself: the trainer's buckets and frame extraction, from a prepare report, from the
media (real ffmpeg clips, real PNG images) or from the settings, and the estimate that follows it."""

import dataclasses
import json
from pathlib import Path

import pytest

import media
from kohyawan.config import profiles
from kohyawan.estimate import plan as est
from kohyawan.estimate import workload
from kohyawan.run import rungs
from kohyawan.trainer import cachefiles

DS = cachefiles.DatasetCfg(0, True, (512, 512), 1, 1, ".txt", ".", ".", None, (1,), True, True)


def test_buckets_are_the_trainers_list_of_nearest_aspect():
    # 512x512: sides 256..512 in steps of 16, each with the largest multiple of 16 within the area, both ways
    assert cachefiles.bucket_sizes((512, 512))[:3] == [(256, 1024), (272, 960), (288, 896)]
    assert cachefiles.bucket((1000, 300), DS) == (960, 272)       # 3.53 is nearer 3.33 than 3.11
    assert cachefiles.bucket((1280, 720), DS) == (672, 384)
    assert cachefiles.bucket((400, 300), DS) == (400, 288)        # bucket_no_upscale: own size, floored to 16
    assert cachefiles.bucket((400, 300), dataclasses.replace(DS, bucket_no_upscale=False)) == (592, 432)
    assert cachefiles.bucket((1000, 300), dataclasses.replace(DS, enable_bucket=False)) == (512, 512)
    # latent caching of video always buckets and may upscale, whatever bucket_no_upscale says
    assert cachefiles.video_bucket((400, 300), DS) == (592, 432)


def test_frame_extraction_and_source_fps():
    clip = dataclasses.replace(DS, is_image=False, frame_extraction="full", max_frames=25)
    assert cachefiles.crops(81, clip) == [(0, 25)] and cachefiles.crops(16, clip) == [(0, 13)]
    # 60 frames at 30 fps: the trainer keeps a frame whenever 16/30 of a frame has passed: 32, then 4n+1
    thirty = dataclasses.replace(clip, max_frames=129, source_fps=30.0)
    assert cachefiles.frames_at_trainer_rate(60, thirty) == 32 and cachefiles.crops(60, thirty) == [(0, 29)]
    head = dataclasses.replace(clip, frame_extraction="head", target_frames=(17, 33))
    assert cachefiles.crops(25, head) == [(0, 17)]
    uniform_one = dataclasses.replace(head, frame_extraction="uniform", frame_sample=1)
    assert cachefiles.crops(40, uniform_one) == [(0, 17), (0, 33)]      # the trainer turns it into head


def spec_for(root, *sets, profile="character"):
    return profiles.resolve(profile, task="t2v-A14B", expert="high", sets=sets, dataset_dir=root)


def _prepared(root: Path, clips=(81, 81), size=(512, 512), images=0) -> Path:
    """A prepared dataset's layout and report.json; the media files are empty (the report is what is read)."""
    items = []
    for i, frames in enumerate(clips):
        out = f"videos/c{i}-f00000.mp4"
        items.append({"source": f"c{i}.mp4", "kind": "video", "status": "kept", "outputs": [out],
                      "output_size": list(size), "clips": [{"output": out, "start": 0, "frames": frames}]})
    for i in range(images):
        items.append({"source": f"i{i}.png", "kind": "image", "status": "kept", "outputs": [f"images/i{i}.png"],
                      "output_size": list(size), "clips": []})
    for item in items:
        for out in item["outputs"]:
            (root / out).parent.mkdir(parents=True, exist_ok=True)
            (root / out).write_bytes(b"")
            (root / out).with_suffix(".txt").write_text("a caption")
    (root / "report.json").write_text(json.dumps({"items": items}))
    return root


def test_a_prepared_dataset_is_read_from_its_report(tmp_path):
    spec = spec_for(_prepared(tmp_path / "d"), "max_frames=81")
    work = workload.for_spec(spec, workload.gather(spec))
    assert work.basis == "report" and work.clips == 2 and work.images == 0
    peak = work.peak()
    assert (peak.kind, peak.width, peak.height, peak.frames, peak.largest_batch) == ("video", 512, 512, 81, 1)
    assert "from report.json" in work.describe()
    # the profile's own max_frames (25) cuts the same clips shorter
    assert workload.for_spec(spec_for(tmp_path / "d"), workload.gather(spec)).peak().frames == 25


def test_media_without_a_report_are_probed(tmp_path):
    root = tmp_path / "d"
    for i in range(2):
        media.video(root / "videos" / f"c{i}.mp4", size="160x96", rate=16, seconds=1.0)
        (root / "videos" / f"c{i}.txt").write_text("a clip")
        media.image(root / "images" / f"i{i}.png", size="320x240")
        (root / "images" / f"i{i}.txt").write_text("an image")
    spec = spec_for(root, "resolution=[256,256]")
    work = workload.for_spec(spec, workload.gather(spec))
    assert work.basis == "probed" and (work.images, work.clips) == (2, 2)
    shapes = {(s.kind, s.width, s.height, s.frames) for s in work.shapes}
    # 16 frames -> 13 (4n+1); the 160x96 clips are cached at their nearest 256x256 bucket (upscaled); the
    # 320x240 images are larger than 256x256, so bucket_no_upscale does not keep their size either
    assert shapes == {("video",) + cachefiles.video_bucket((160, 96), _cfg(spec, False)) + (13,),
                      ("image",) + cachefiles.bucket((320, 240), _cfg(spec, True)) + (1,)}
    assert work.peak().kind == "video"


def _cfg(spec, image: bool) -> cachefiles.DatasetCfg:
    return next(d for d in cachefiles.parse(workload._dataset_config(spec)) if d.is_image == image)


def test_unreadable_media_fall_back_to_the_settings_and_say_so(tmp_path):
    root = tmp_path / "d" / "videos"
    root.mkdir(parents=True)
    (root / "broken.mp4").write_bytes(b"not a video")
    (root / "broken.txt").write_text("a clip")
    spec = spec_for(tmp_path / "d")
    work = workload.for_spec(spec, workload.gather(spec))
    assert work.basis == "settings" and work.peak().frames == 25 and (work.peak().width, work.peak().height) == \
        (512, 512)
    assert any("could not be read" in n for n in work.notes) and "NOT read from the data" in work.describe()


def test_the_largest_batch_is_within_one_bucket(tmp_path):
    spec = spec_for(_prepared(tmp_path / "d", clips=(81, 81, 81)), "max_frames=81", "batch_size=2")
    work = workload.for_spec(spec, workload.gather(spec))
    (shape,) = work.shapes
    assert shape.largest_batch == 2 and shape.batch_sizes() == {2: 1, 1: 1}
    one_each = spec_for(_prepared(tmp_path / "e", clips=(81, 49)), "max_frames=81", "batch_size=2")
    work = workload.for_spec(one_each, workload.gather(one_each))
    assert [s.largest_batch for s in work.shapes] == [1, 1]      # different frame counts never share a batch


def test_image_only_data_is_estimated_as_images(tmp_path):
    images = _prepared(tmp_path / "d", clips=(), size=(1280, 720), images=2)
    spec = spec_for(images, "resolution=[1280,720]", "fp8_base=true", "blocks_to_swap=20", "optimizer_type=adamw")
    e = est.estimate_spec(spec)
    assert e.workload.images == 2 and e.workload.peak().frames == 1
    as_clips = est.estimate_values(spec.train, spec.dataset, task=spec.task, expert=spec.expert)
    assert e.vram_gib < as_clips.vram_gib - 10        # the settings alone would take them for 25-frame clips


def test_rungs_that_cut_frames_or_resolution_are_recomputed_on_the_same_data(tmp_path):
    spec = spec_for(_prepared(tmp_path / "d", clips=(81, 33)), "max_frames=81")
    ladder = est.ladder_estimates(spec, rungs.vram_rungs(spec), rungs.apply, vram_gib=24)
    by = {e.label: e for e in ladder.estimates}
    assert by["base"].workload.peak().frames == 81
    assert by["fewer_frames"].workload.peak().frames == 41                 # max_frames 81 -> 41
    assert sorted(s.frames for s in by["fewer_frames"].workload.shapes) == [33, 41]
    assert (by["lower_resolution"].workload.peak().width, by["lower_resolution"].workload.peak().height) == (384, 384)
    assert by["fewer_frames"].vram_gib < by["gradient_checkpointing_cpu_offload"].vram_gib
    assert all(e.workload.basis == "report" for e in ladder.estimates)


@pytest.mark.parametrize("frames,expected", [(1, 1), (25, 25), (26, 25), (129, 129)])
def test_settings_frames(frames, expected):
    assert workload.settings_frames({"frame_extraction": "full", "max_frames": frames}) == expected
