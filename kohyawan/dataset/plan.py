"""Pure decisions: what to keep, drop or split, from probe results, captions and settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from kohyawan.dataset import quality
from kohyawan.dataset.settings import Settings

REASONS = ("unreadable", "too_small", "blurry", "duplicate", "missing_caption", "empty_caption",
           "caption_encoding", "too_short", "lighting_change", "shaky", "scene_cut")


@dataclass(frozen=True)
class Piece:
    start: int        # first frame, at the target rate
    frames: int       # 4n+1


@dataclass
class Decision:
    status: str = "kept"
    reasons: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    pieces: list = field(default_factory=list)     # videos: kept Pieces; images: []

    def drop(self, reason: str, note: str | None = None) -> None:
        self.status = "dropped"
        if reason not in self.reasons:
            self.reasons.append(reason)
        if note:
            self.notes.append(f"{reason}: {note}")


def output_size(width: int, height: int, settings: Settings) -> tuple[int, int]:
    """Output frame size: square by default; with keep_aspect, the source aspect at about R*R pixels.

    Sides are multiples of 16 (the trainer's bucket step); among sizes of at most R*R pixels and at least
    70 % of that, the one closest to the source aspect wins (then the larger one).
    """
    r = settings.resolution
    if not settings.keep_aspect or not width or not height:
        return r, r
    aspect = width / height
    best = None
    for w in range(16, 4 * r + 1, 16):
        h = max(16, round(w / aspect / 16) * 16)
        area = w * h
        if area > r * r or area < 0.7 * r * r:
            continue
        key = (abs(w / h - aspect) / aspect, -area)
        if best is None or key < best[0]:
            best = (key, (w, h))
    return best[1] if best else (r, r)


def segments(n_frames: int, cut_scores: list[float], threshold: float,
             similarity: list[float] | None = None, max_similarity: float = 0.5) -> list[tuple[int, int]]:
    """Scene segments [start, end) split where the histogram jumps and the picture's structure breaks."""
    similarity = similarity if similarity is not None else [0.0] * len(cut_scores)
    bounds = [0] + [i + 1 for i, (score, sim) in enumerate(zip(cut_scores, similarity))
                    if score > threshold and sim < max_similarity] + [n_frames]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def split_segment(start: int, end: int, lengths: tuple[int, ...]) -> tuple[list[Piece], int]:
    """Consecutive clips, each the longest allowed length that still fits; returns pieces and leftover."""
    pieces: list[Piece] = []
    pos = start
    ordered = sorted(lengths, reverse=True)
    while True:
        remaining = end - pos
        fit = next((n for n in ordered if n <= remaining), None)
        if fit is None:
            return pieces, remaining
        pieces.append(Piece(pos, fit))
        pos += fit


def judge_clip(probe: dict, piece: Piece, settings: Settings) -> tuple[str, str] | None:
    """The reason a clip must be dropped (code, detail), or None."""
    a, b = piece.start, piece.start + piece.frames
    scores = [s for i, s in probe["sharpness"] if a <= i < b]
    soft = [s for s in scores if s is not None and s < settings.blur_threshold]
    if scores and len(soft) > settings.blurry_frame_share * len(scores):
        return "blurry", f"{len(soft)} of {len(scores)} sampled frames below sharpness {settings.blur_threshold:g}"
    luma = probe["luma"][a:b]
    swing = max(luma) - min(luma)
    if swing > settings.lighting_change:
        return "lighting_change", f"brightness moves by {swing:.2f} (limit {settings.lighting_change:g})"
    shake = quality.shake_percent(probe["shifts"][a:b - 1])
    if shake > settings.shaky_percent:
        return "shaky", f"jitter {shake:.1f} % of the frame per frame (limit {settings.shaky_percent:g} %)"
    return None


def decide_video(probe: dict, settings: Settings) -> Decision:
    decision = Decision()
    n = probe["frames"]
    segs = segments(n, probe["cuts"], settings.scene_cut_threshold, probe.get("similarity"),
                    settings.scene_cut_similarity)
    if len(segs) > 1:
        decision.reasons.append("scene_cut")
        decision.notes.append("scene_cut: split at frame(s) " + ", ".join(str(a) for a, _ in segs[1:])
                              + f" ({settings.fps:g} fps)")
    dropped: dict[str, int] = {}
    short_bits = 0
    for start, end in segs:
        pieces, _left = split_segment(start, end, settings.frames)
        if not pieces:
            short_bits += 1
            continue
        for piece in pieces:
            verdict = judge_clip(probe, piece, settings)
            if verdict is None:
                decision.pieces.append(piece)
                continue
            code, detail = verdict
            dropped[code] = dropped.get(code, 0) + 1
            decision.notes.append(f"{code}: clip at frame {piece.start} ({piece.frames} frames): {detail}")
    if not decision.pieces:
        decision.status = "dropped"
        codes = list(dropped) or ["too_short"]
        if short_bits and not dropped:
            decision.notes.append(f"too_short: {n} frames at {settings.fps:g} fps, "
                                  f"fewer than {min(settings.frames)} in every scene")
        for code in codes:
            if code not in decision.reasons:
                decision.reasons.append(code)
    else:
        for code in dropped:  # some pieces went: say so on the kept source
            if code not in decision.reasons:
                decision.reasons.append(code)
        if short_bits:
            decision.notes.append(f"too_short: {short_bits} scene(s) shorter than {min(settings.frames)} frames skipped")
    return decision


def decide_image(probe: dict, settings: Settings) -> Decision:
    decision = Decision()
    score = probe["sharpness"][0][1] if probe["sharpness"] else None
    if score is not None and score < settings.blur_threshold:
        decision.drop("blurry", f"sharpness {score:.4f} below {settings.blur_threshold:g}")
    return decision


LOSSLESS = (".png", ".bmp")


def quality_rank(item: dict) -> tuple:
    """Which of two near-duplicates to keep: more pixels, then a lossless file, then sharper, then the
    earlier path. Lossless before sharper: JPEG block artefacts raise the Laplacian of a copy."""
    probe = item["probe"]
    sharp = (probe.get("sharpness") or [[0, None]])[0][1] or 0.0
    lossy = not item["rel"].lower().endswith(LOSSLESS)
    return (-(probe["width"] * probe["height"]), lossy, -sharp, item["rel"])


def find_duplicates(images: list[dict], max_bits: int) -> dict[str, str]:
    """rel of each dropped near-duplicate -> rel of the image kept in its place."""
    ordered = sorted(images, key=quality_rank)
    kept: list[dict] = []
    losers: dict[str, str] = {}
    for item in ordered:
        h = item["probe"].get("dhash")
        match = next((k for k in kept if h is not None and quality.hamming(h, k["probe"]["dhash"]) <= max_bits),
                     None)
        if match is None:
            kept.append(item)
        else:
            losers[item["rel"]] = match["rel"]
    return losers
