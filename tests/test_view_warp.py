"""Re-aiming a remembered view: pinhole geometry, screen-fixed pixels, and finding them in recordings."""

import math
import numpy as np
import pytest
import torch

from worldsim.model.view_warp import estimate_overlay, focal_px, mask_to_runs, runs_to_mask, yaw_warp


def _edge(x: int, w: int = 64) -> torch.Tensor:
    """A white wall right of column ``x``, black left of it: (1, w, w, 3) uint8."""
    f = torch.zeros(1, w, w, 3, dtype=torch.uint8)
    f[:, :, x:] = 255
    return f


def _edge_column(frame: torch.Tensor) -> float:
    """Where a dark→bright edge is, in pixels from the left (sub-pixel, from the row's mean level)."""
    return float(64 - frame[0, 32, :, 0].float().sum() / 255.0)


def test_no_turn_is_the_identity():
    f = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(yaw_warp(f, torch.zeros(2), 90.0), f)


@pytest.mark.parametrize("deg", [5.0, 10.0, -12.0])
def test_an_edge_at_the_centre_moves_as_a_pinhole_predicts(deg):
    f = focal_px(64, 90.0)
    assert f == pytest.approx(32.0)
    out = yaw_warp(_edge(32), torch.tensor([deg]), 90.0)
    # turning left by deg puts what was straight ahead deg to the right: x = f·tan(deg) right of centre
    assert _edge_column(out) == pytest.approx(32 + f * math.tan(math.radians(deg)), abs=0.6)


def test_turning_there_and_back_restores_the_view_and_keeps_screen_fixed_pixels():
    rng = np.random.default_rng(0)
    f = torch.from_numpy(np.kron(rng.integers(0, 256, (16, 16, 3)), np.ones((4, 4, 1))).astype(np.uint8))[None]
    turned = yaw_warp(f, torch.tensor([8.0]), 90.0)
    back = yaw_warp(turned, torch.tensor([-8.0]), 90.0)
    mid = (slice(None), slice(8, 56), slice(16, 48))  # away from the strip the turn brought into view

    def err(x):
        return float((x[mid].float() - f[mid].float()).abs().mean())
    assert err(back) < 0.3 * err(turned)  # only bilinear blur is left
    keep = torch.zeros(64, 64, dtype=torch.bool)
    keep[48:, 28:36] = True                           # e.g. the weapon
    out = yaw_warp(f, torch.tensor([8.0]), 90.0, keep)
    assert torch.equal(out[:, 48:, 28:36], f[:, 48:, 28:36]) and not torch.equal(out, f)


def test_overlay_runs_round_trip_and_reject_bad_input():
    mask = np.zeros((64, 64), bool)
    mask[40:, 30:34] = True
    mask[63, 0] = True
    assert np.array_equal(runs_to_mask(mask_to_runs(mask), 64, 64), mask)
    for bad in ([[64, 0, 1]], [[0, 5, 2]], [[0, 1]]):
        with pytest.raises(ValueError, match="overlay run"):
            runs_to_mask(bad, 64, 64)


def test_estimate_overlay_finds_the_pixels_that_do_not_turn():
    """A synthetic recording: a textured world seen while turning 6° a tick, and a fixed sprite."""
    rng = np.random.default_rng(1)
    world = np.kron(rng.integers(0, 256, (16, 200, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # a panorama
    sprite = rng.integers(0, 256, (20, 8, 3)).astype(np.uint8)
    frames, yaw = [], []
    for t in range(80):
        col = 4 * t                                    # the panorama scrolls ~4 px a tick, as a turn does
        f = world[:, col:col + 64].copy()
        f[44:, 28:36] = sprite                         # the "weapon"
        frames.append(f)
        yaw.append(-6.0 * t * (4 / (focal_px(64, 90.0) * math.radians(6.0))))
    pose = np.zeros((80, 5))
    pose[:, 3] = yaw
    ep = type("Ep", (), {"frames": np.stack(frames), "pose": pose, "__len__": lambda self: 80})()
    mask = estimate_overlay([ep], every=1)
    assert mask is not None
    assert mask[44:, 28:36].mean() > 0.9 and mask[:40].mean() < 0.05
    assert estimate_overlay([type("Ep", (), {"frames": np.stack(frames), "pose": np.zeros((80, 5)),
                                              "__len__": lambda self: 80})()]) is None  # no turns: nothing to learn from
