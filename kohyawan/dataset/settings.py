"""Default dataset-prep settings and thresholds, overridable from a profile's ``[prepare]`` section.

Every quality threshold is measured on what the model will see: in square mode the centre crop at the
training resolution, with --keep-aspect the whole frame with its shorter side at the training resolution.
Blur or shake that vanishes when the trainer downsamples cannot hurt training, and a threshold stated at
one fixed scale stays meaningful whatever the source resolution is.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from kohyawan.errors import ConfigError

# Minimum and recommended dataset sizes per built-in profile (the guide's table). The core's profiles
# will carry these as [profile] min_images / min_clips; callers pass them in, this is the fallback.
PROFILE_SIZES: dict[str, dict[str, int]] = {
    "character": {"min_images": 150, "min_clips": 30, "recommended_images": 300, "recommended_clips": 60},
    "style": {"min_images": 0, "min_clips": 200, "recommended_images": 0, "recommended_clips": 400},
    "motion": {"min_images": 0, "min_clips": 300, "recommended_images": 0, "recommended_clips": 600},
    "domain": {"min_images": 0, "min_clips": 400, "recommended_images": 0, "recommended_clips": 800},
}


# Settings that only judge the dataset's size: they change no output byte, and default to None (no minimum).
_SIZE_MINIMUMS = frozenset({"min_images", "min_clips"})


@dataclass(frozen=True)
class Settings:
    # Output shape. 512 square is the guide's default for 14B LoRAs and fits 24 GB cards with 25 frames.
    resolution: int = 512
    keep_aspect: bool = False
    # 16 fps is what the WAN 2.2 14B experts generate at; 24 belongs to the 5B model (docs/architecture.md,
    # "Dataset").
    fps: float = 16.0
    # 4n+1 lengths, about one second at 16 fps (the guide's 16-24 frame range, rounded to what the
    # trainer accepts). Each clip takes the longest that fits.
    frames: tuple[int, ...] = (17, 21, 25)
    # x264 CRF 14 is visually lossless for 512 px content; the latent cache sees no block artefacts.
    crf: int = 14
    preset: str = "medium"

    # Blur: variance of the 4-neighbour Laplacian divided by the variance of the image itself, on gray
    # frames at training scale. Dividing by the image variance makes the measure contrast-free (a dim or
    # flat-shaded but sharp frame is not "blurry"). White noise scores 20. Measured on two ordinary
    # photos at 512 px: sharp 0.28-0.29, Gaussian blur sigma 1 px 0.12, sigma 2 0.03-0.04, sigma 3
    # 0.014-0.019, sigma 5 0.006-0.011. 0.01 flags only frames that are plainly soft at the size the
    # model sees them (sigma 4+), leaving shallow depth of field and mild motion blur alone.
    blur_threshold: float = 0.01
    # A video is blurry when more than this share of its frames are (the issue: "most frames").
    blurry_frame_share: float = 0.5
    # Near-duplicate images: 64-bit difference hash; <= 4 differing bits is a re-encode, resize or tiny
    # crop of the same picture, while different shots of one subject differ in 10+ bits.
    duplicate_hash_bits: int = 4
    # Hard cut: mean absolute difference of consecutive 32-bin luminance histograms (each normalised to
    # sum 1, so 0..2). Camera motion and lighting drift stay under ~0.3; a cut between shots is ~0.6+.
    scene_cut_threshold: float = 0.5
    # ... and the structure of consecutive frames (brightness- and contrast-free correlation of 32 px
    # thumbnails) must break: fades and exposure changes keep it near 1, fast pans ~0.6+, a cut ~0.
    scene_cut_similarity: float = 0.4
    # Lighting change inside a clip: range of mean luminance (0..1) over the clip, excluding cuts. A fade
    # to black or a light switched on moves it by 0.3+; sunlight, exposure drift move it < 0.15.
    lighting_change: float = 0.25
    # Shake: median over frames of the jitter (per-frame global translation from phase correlation on
    # 128 px thumbnails, minus its 5-frame moving average), in % of the frame size. Pans and drifts are
    # smooth and are removed by the average; steady or handheld-but-careful footage stays well under 1 %
    # (a static camera over moving subjects measured 0.03 %, a pan with 30->16 fps judder 1.4 %); a
    # shaken camera moving 10-20 % of the frame back and forth measured 12 %. 3 % leaves room for both.
    shaky_percent: float = 3.0
    # Text encoder reads 512 tokens; we estimate tokens as words * 1.3 (umT5 sentencepiece).
    caption_max_tokens: int = 512
    min_images: int | None = None
    min_clips: int | None = None
    trigger: str | None = None

    # ---- derived -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of everything that changes the bytes of an output (for incremental reruns)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items() if k not in _SIZE_MINIMUMS}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["frames"] = list(self.frames)
        return data


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` checked (and normalised) against the type of the field's default."""
    if name == "frames":
        return _frame_counts(value)
    if isinstance(default, bool):
        return _boolean(name, value)
    if isinstance(default, int) or name in _SIZE_MINIMUMS:
        return _integer(name, value)
    if isinstance(default, float):
        return _number(name, value)
    return _text(name, value)


def _frame_counts(value: Any) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, (list, tuple)) or not items or not all(_is_frame_count(n) for n in items):
        raise ConfigError(f"prepare.frames must be frame counts of the form 4n+1 (17, 21, 25), got {value!r}")
    return tuple(sorted(set(items)))


def _is_frame_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and (n - 1) % 4 == 0


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"prepare.{name} must be true or false, got {value!r}")
    return value


def _integer(name: str, value: Any) -> int:
    # bool is an int in Python, but true/false is not a count
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"prepare.{name} must be an integer, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"prepare.{name} must be a number, got {value!r}")
    return float(value)


def _text(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"prepare.{name} must be a string, got {value!r}")
    return value


def settings_from(overrides: Mapping[str, Any] | None = None, base: Settings | None = None) -> Settings:
    """Settings with the given keys replaced; unknown keys and wrong types raise ConfigError."""
    base = base or Settings()
    changes: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, list(_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown [prepare] key {name!r}{hint}")
        changes[name] = _coerce(name, value, getattr(Settings(), name))
    result = dataclasses.replace(base, **changes)
    if result.resolution < 16 or result.resolution % 16:
        raise ConfigError(f"resolution must be a multiple of 16, got {result.resolution}")
    if not 1 <= result.fps <= 120:
        raise ConfigError(f"fps must be between 1 and 120, got {result.fps}")
    if not 0 <= result.crf <= 51:
        raise ConfigError(f"crf must be 0..51, got {result.crf}")
    return result


def size_targets(settings: Settings, profile: str | None) -> dict[str, int]:
    """Minimum / recommended sizes: explicit settings first, then the built-in profile table."""
    table = dict(PROFILE_SIZES.get(profile or "", {}))
    if settings.min_images is not None:
        table["min_images"] = settings.min_images
    if settings.min_clips is not None:
        table["min_clips"] = settings.min_clips
    return table
