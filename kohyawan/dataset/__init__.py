"""Dataset preparation: raw images and videos in, a validated WAN training set out (see docs/architecture.md,
"Dataset").

Entry points (import them from their modules; this package imports nothing, so planning code that needs
only ``inventory`` does not load numpy or the ffmpeg runner):
  prepare.prepare(src, dest, settings, *, jobs=None, profile=None, progress=None) -> report dict
  settings.settings_from(overrides: Mapping | None) -> Settings   (a profile's [prepare] section)
  layout.write_dataset_toml(dest, *, resolution, target_frames, batch_size=1, num_repeats=1,
                            enable_bucket=False, frame_extraction="head", images=None, videos=None) -> Path
  report.load_report(dest) -> dict
  check.check_dataset(dest) -> CheckResult(ok, problems, images, clips)
  inventory.scan(root, caption_extension=".txt") -> Inventory   (what planning needs to know, no decoding)
"""
