"""Pure image measures over gray frames (float32, 0..1). No I/O; the decisions live in ``plan``."""

from __future__ import annotations

import numpy as np

HIST_BINS = 32
THUMB = 128  # motion is measured on THUMB x THUMB thumbnails: 0.8 % of the frame per pixel


def area_resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Box-filter resize (mean of each source cell); good enough for hashes and motion thumbnails."""
    rows = np.linspace(0, img.shape[0], height + 1).astype(int)
    cols = np.linspace(0, img.shape[1], width + 1).astype(int)
    rows = np.minimum(rows, img.shape[0] - 1)[:-1]
    cols = np.minimum(cols, img.shape[1] - 1)[:-1]
    summed = np.add.reduceat(np.add.reduceat(img, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, img.shape[0])), np.diff(np.append(cols, img.shape[1])))
    return summed / np.maximum(counts, 1)


def sharpness(img: np.ndarray) -> float | None:
    """var(Laplacian) / var(image): contrast-free high-frequency share; None for a flat frame.

    Takes float (0..1) or uint8 frames; the ratio does not depend on the scale of the values.
    """
    if img.shape[0] < 3 or img.shape[1] < 3:
        return None
    work = img.astype(np.int16) if img.dtype == np.uint8 else img  # int16: exact and fast for 8-bit frames
    spread = float(work.var())
    unit = 255.0 ** 2 if img.dtype == np.uint8 else 1.0
    if spread < 1e-4 * unit:  # black or uniform frame: neither sharp nor blurry (fades handle those)
        return None
    lap = (work[1:-1, :-2] + work[1:-1, 2:] + work[:-2, 1:-1] + work[2:, 1:-1]) - 4 * work[1:-1, 1:-1]
    return float(lap.var()) / spread


def histogram(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        hist = np.bincount((img >> 3).ravel(), minlength=HIST_BINS)  # 256 / 32 levels per bin
    else:
        hist, _ = np.histogram(img, bins=HIST_BINS, range=(0.0, 1.0))
    return hist.astype(np.float32) / max(1, img.size)


def block_mean(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fast box downscale by whole blocks (the few edge pixels that do not fill a block are left out)."""
    by, bx = max(1, img.shape[0] // height), max(1, img.shape[1] // width)
    if img.shape[0] < height or img.shape[1] < width:
        return area_resize(img.astype(np.float32), height, width)
    cropped = img[: by * height, : bx * width]
    return cropped.reshape(height, by, width, bx).mean(axis=(1, 3), dtype=np.float32)


def dhash(img: np.ndarray) -> int:
    """64-bit difference hash: sign of horizontal gradients on a 9x8 box-filtered thumbnail."""
    small = area_resize(img.astype(np.float32), 8, 9)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def thumbnail(img: np.ndarray) -> np.ndarray:
    thumb = block_mean(img, THUMB, THUMB)
    return thumb * (1.0 / 255.0) if img.dtype == np.uint8 else thumb


_WINDOW = np.outer(np.hanning(THUMB), np.hanning(THUMB)).astype(np.float32)


def spectrum(thumb: np.ndarray) -> np.ndarray:
    """Windowed FFT of a THUMB x THUMB thumbnail, computed once per frame and reused for both steps."""
    return np.fft.rfft2((thumb - thumb.mean()) * _WINDOW)


def shift_between(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Global translation (dy, dx) from a to b in thumbnail pixels, by phase correlation."""
    return shift_from_spectra(spectrum(a), spectrum(b))


def shift_from_spectra(fa: np.ndarray, fb: np.ndarray) -> tuple[float, float]:
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-9)
    corr = np.fft.irfft2(cross, s=(THUMB, THUMB))
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)

    def refine(idx: int, axis: int) -> float:
        # parabolic fit around the peak for sub-pixel precision
        n = corr.shape[axis]
        take = (lambda i: corr[i % n, px]) if axis == 0 else (lambda i: corr[py, i % n])
        l, c, r = take(idx - 1), take(idx), take(idx + 1)
        denom = l - 2 * c + r
        off = 0.5 * (l - r) / denom if abs(denom) > 1e-12 else 0.0
        pos = idx + off
        return pos - n if pos > n / 2 else pos

    return refine(py, 0), refine(px, 1)


def shake_percent(shifts: list[tuple[float, float]]) -> float:
    """Median size of the jitter (per-frame motion minus its 5-frame moving average), % of frame size.

    A steady pan or drift is smooth and is removed by the moving average; what is left is the
    frame-to-frame shudder of a shaken camera. The median (not the mean) ignores the occasional uneven
    step that frame-rate conversion puts into a smooth pan, and a moving object in a few frames.
    """
    if len(shifts) < 3:
        return 0.0
    motion = np.asarray(shifts, dtype=np.float64) * (100.0 / THUMB)
    kernel = np.ones(5) / 5.0
    smooth = np.stack([np.convolve(np.pad(motion[:, i], 2, mode="edge"), kernel, mode="valid")
                       for i in range(2)], axis=1)
    jitter = motion - smooth
    return float(np.median(np.sqrt((jitter ** 2).sum(axis=1))))


def cut_scores(hists: list[np.ndarray]) -> list[float]:
    """L1 distance between consecutive luminance histograms (0..2); index i is the step i -> i+1."""
    return [float(np.abs(hists[i + 1] - hists[i]).sum()) for i in range(len(hists) - 1)]


def structure_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two thumbnails after removing brightness and contrast (-1..1).

    A fade or exposure change keeps the picture's structure (close to 1); a cut to another shot
    does not. Used with the histogram jump so fades are not taken for cuts.
    """
    a = a[::4, ::4] - a[::4, ::4].mean()
    b = b[::4, ::4] - b[::4, ::4].mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denom < 1e-6:  # a flat frame (black): no structure to compare; treat as unchanged
        return 1.0
    return float((a * b).sum()) / denom
