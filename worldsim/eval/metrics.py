"""Image metrics, all in 64×64 uint8 RGB pixel space (numpy only).

* PSNR: ``10·log10(255² / MSE)`` over all pixels and channels of one frame, **capped at
  100 dB** (identical frames would be +inf; the cap keeps means finite). A set of frames
  reports the mean of the per-frame (capped) values.
* SSIM: Wang et al. 2004 with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, computed per channel over the valid region and averaged over channels.
* gradient energy ("sharpness", "edge energy"): mean magnitude of the finite-difference
  gradient of the luma image; ``sharpness_ratio`` divides the generated frames' mean by
  the real frames' mean at the same steps (≈ 1.0 for the game itself, < 1 for blur).
* colour histogram: 16 bins per channel; the distance between two histograms is the
  total-variation distance (half the L1 norm), averaged over the three channels, in [0, 1].
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

EVAL_RES = (64, 64)
PSNR_CAP_DB = 100.0
HIST_BINS = 16


def to_eval_res(frames: np.ndarray, res: tuple[int, int] = EVAL_RES) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 → ``(..., 64, 64, 3)`` uint8 (area resampling when needed)."""
    frames = np.asarray(frames)
    if tuple(frames.shape[-3:-1]) == tuple(res):
        return frames
    import torch
    import torch.nn.functional as F

    lead = frames.shape[:-3]
    x = torch.from_numpy(np.array(frames.reshape(-1, *frames.shape[-3:]))).permute(0, 3, 1, 2).float()  # copy: may be a read-only mmap
    y = F.interpolate(x, size=res, mode="area") if all(s >= r for s, r in zip(frames.shape[-3:-1], res)) \
        else F.interpolate(x, size=res, mode="bilinear", align_corners=False, antialias=True)
    y = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return y.reshape(*lead, *res, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB (capped at 100) of ``(N, H, W, 3)`` uint8 frames."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 3:
        a, b = a[None], b[None]
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        val = 10.0 * np.log10(255.0 ** 2 / mse)
    return np.minimum(np.where(mse == 0, PSNR_CAP_DB, val), PSNR_CAP_DB)


def _gauss_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over axes 1 and 2 of (N, H, W, C)."""
    k = len(taps)
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    y = sum(taps[i] * x[:, i:i + h] for i in range(k))
    return sum(taps[i] * y[:, :, i:i + w] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Per-frame SSIM of ``(N, H, W, 3)`` uint8 frames (mean over channels and positions)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 3:
        a, b = a[None], b[None]
    taps = _gauss_taps()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = np.empty(len(a))
    for lo in range(0, len(a), chunk):
        x, y = a[lo:lo + chunk].astype(np.float64), b[lo:lo + chunk].astype(np.float64)
        mx, my = _filter(x, taps), _filter(y, taps)
        sxx = _filter(x * x, taps) - mx * mx
        syy = _filter(y * y, taps) - my * my
        sxy = _filter(x * y, taps) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        out[lo:lo + chunk] = s.reshape(len(x), -1).mean(axis=1)
    return out


def luma(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames, np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def gradient_energy(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean gradient magnitude of the luma image, ``(N,)``."""
    y = luma(frames)
    if y.ndim == 2:
        y = y[None]
    gx = y[:, :-1, 1:] - y[:, :-1, :-1]
    gy = y[:, 1:, :-1] - y[:, :-1, :-1]
    return np.sqrt(gx * gx + gy * gy).reshape(len(y), -1).mean(axis=1)


def brightness(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean luma, ``(N,)``."""
    y = luma(frames)
    return y.reshape(len(y), -1).mean(axis=1) if y.ndim == 3 else np.array([y.mean()])


def colour_hist(frames: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Normalised per-channel histogram of a set of frames, ``(3, bins)``."""
    f = np.asarray(frames).reshape(-1, 3)
    n = max(1, len(f))
    return np.stack([np.bincount((f[:, c].astype(np.uint16) * bins) >> 8, minlength=bins)[:bins] / n for c in range(3)])


def hist_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two ``(3, bins)`` histograms, mean over channels."""
    return float(0.5 * np.abs(p - q).sum(axis=1).mean())


def finite_mean(values: Iterable[float] | np.ndarray) -> float | None:
    """Mean of the finite values, ``None`` when there are none."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def rnd(x: float | None, nd: int = 4) -> float | None:
    """Round for JSON; NaN/inf/None become None."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), nd)
