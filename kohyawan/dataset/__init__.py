"""Dataset preparation: raw images and videos in, a validated WAN training set out.

Public API (other modules call these):
  prepare(src, dest, settings, *, jobs=None, profile=None, progress=None) -> report dict
  settings_from(overrides: Mapping | None) -> Settings       (a profile's [prepare] section)
  write_dataset_toml(dest, *, resolution, target_frames, batch_size=1, num_repeats=1,
                     enable_bucket=False, frame_extraction="head") -> Path
  load_report(dest) -> dict
  check_dataset(dest) -> CheckResult(ok, problems, images, clips)

Submodules import numpy and run ffmpeg; nothing here is imported by ``kohyawan.cli`` at start-up.
"""

from __future__ import annotations

from kohyawan.dataset.check import CheckResult, check_dataset
from kohyawan.dataset.layout import write_dataset_toml
from kohyawan.dataset.report import load_report
from kohyawan.dataset.settings import PROFILE_SIZES, Settings, settings_from

__all__ = ["CheckResult", "check_dataset", "write_dataset_toml", "load_report", "Settings", "settings_from",
           "PROFILE_SIZES", "prepare"]


def prepare(*args, **kwargs):
    from kohyawan.dataset.prepare import prepare as _prepare
    return _prepare(*args, **kwargs)
