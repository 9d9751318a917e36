"""Built-in baselines: copy-last-frame and the turn-shift prior.

Both follow :mod:`worldsim.eval.interface` exactly and produce silent audio.

**copy-last**: every step returns the latest frame unchanged.

**shift**: every step returns the latest frame shifted horizontally by the commanded
yaw (turn right → image content moves left), the revealed edge filled by repeating the
border column. Yaw per step = ``mouse_dx`` (degrees/step) plus the keyboard turn of the
``turn_left``/``turn_right`` buttons. Calibration, measured on ViZDoom 1.3 (freedoom2,
35 tics/s, ``TURN_LEFT_RIGHT_DELTA`` applied on every tic):

* keyboard turn is not constant: 1.758°/tic for the first 3 tics a turn key is held,
  then 3.516°/tic (7.031°/tic with ``run``). At frame_skip 2 that is 3.5°, 5.3°, then
  7.0° per step (3.5°, 8.8°, 14.1° with run). The session tracks how long the key is held.
* pixels per degree is estimated from the data itself: the horizontal shift between real
  consecutive frames is found by least-squares matching over integer shifts with parabolic
  sub-pixel refinement, and the median of ``shift / mouse_dx`` over pure-mouse-turn steps
  (no move buttons) is taken. For a perspective camera with Doom's 90° horizontal FOV the
  centre of the image moves ``(W/2)/tan(45°)`` px per radian = ``W·π/360`` ≈ 0.56 px/deg
  at W = 64, the edges up to twice that, and ``W/90`` ≈ 0.71 px/deg is the average over
  the field. Neither is right for a single uniform shift: on real 64×64 ViZDoom frames
  (freedoom2 MAP01, two recordings) the estimate is 0.61–0.64 px/deg, and a sweep of the
  shift baseline's one-step PSNR on real turning steps peaks there (0.60–0.635: 21.65 dB;
  0.559: 21.61; 0.711: 21.49; 0.8: 21.24). When the data has fewer than 10 usable turning
  steps, ``0.63·W/64`` is used. A button-turn scale is fitted the same way against the tic
  model above (0.92 on the held-out recording, i.e. the model is within 8 %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from worldsim.actions import ActionSchema

# ViZDoom keyboard turn, degrees per tic (angleturn 320 / 640 / 1280 of 65536 per tic).
SLOW_TURN_DEG = 360 * 320 / 65536
NORMAL_TURN_DEG = 360 * 640 / 65536
FAST_TURN_DEG = 360 * 1280 / 65536
SLOW_TURN_TICS = 3
MOVE_BUTTONS = ("forward", "back", "strafe_left", "strafe_right")


def _silence(spec: dict[str, int] | None) -> np.ndarray | None:
    return None if spec is None else np.zeros((spec["samples_per_step"], spec["channels"]), np.int16)


# ----- copy-last ------------------------------------------------------------------------
class _CopyLastSession:
    def __init__(self, frame: np.ndarray, spec: dict[str, int] | None):
        self.frame, self.spec = frame, spec

    def step(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.frame, _silence(self.spec)


class CopyLastModel:
    """Returns the last context frame forever, with silence."""

    name = "baseline:copy-last"
    context_steps = 1

    def __init__(self, schema: ActionSchema, resolution: tuple[int, int], audio_spec: dict[str, int] | None = None):
        self.schema, self.resolution, self.audio_spec = schema, tuple(resolution), audio_spec

    def open(self, context: dict[str, Any], seed: int = 0) -> _CopyLastSession:
        return _CopyLastSession(np.array(context["frames"][-1]), self.audio_spec)


# ----- shift ----------------------------------------------------------------------------
@dataclass
class ShiftCalibration:
    """How the shift baseline turns actions into pixels (see the module docstring)."""

    px_per_deg: float
    button_scale: float = 1.0
    frame_skip: int = 2
    source: str = "default"  # "data" when px_per_deg was measured here, else "default" (0.63·W/64)
    mouse_pairs: int = 0  # real pairs the px_per_deg estimate used
    button_pairs: int = 0
    mouse_ratio_iqr: tuple[float, float] | None = None  # spread of shift/mouse_dx over those pairs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_px_per_deg(width: int) -> float:
    """Uniform-shift pixels per degree measured on 64-px ViZDoom frames, scaled to ``width``."""
    return 0.63 * width / 64


def keyboard_turn_deg(direction: int, held_tics: int, run: bool, frame_skip: int) -> float:
    """Degrees a held turn key adds in one step (sign = direction, +1 right), given tics already held."""
    if direction == 0:
        return 0.0
    fast = FAST_TURN_DEG if run else NORMAL_TURN_DEG
    deg = sum(SLOW_TURN_DEG if k < SLOW_TURN_TICS else fast for k in range(held_tics, held_tics + frame_skip))
    return float(direction * deg)


class _TurnModel:
    """Commanded yaw per step for one schema, tracking how long a turn key has been held."""

    def __init__(self, schema: ActionSchema, calib: ShiftCalibration):
        b, a = schema.buttons, schema.axes
        self.i_dx = a.index("mouse_dx") if "mouse_dx" in a else None
        self.i_left = b.index("turn_left") if "turn_left" in b else None
        self.i_right = b.index("turn_right") if "turn_right" in b else None
        self.i_run = b.index("run") if "run" in b else None
        self.calib = calib
        self.dir, self.held = 0, 0

    def key_direction(self, buttons: np.ndarray) -> int:
        r = int(buttons[self.i_right] > 0) if self.i_right is not None else 0
        l_ = int(buttons[self.i_left] > 0) if self.i_left is not None else 0
        return r - l_

    def yaw(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[float, float]:
        """(mouse degrees, keyboard degrees) for this step; advances the held-key counter."""
        mouse = float(axes[self.i_dx]) if self.i_dx is not None else 0.0
        d = self.key_direction(buttons)
        if d != self.dir:
            self.dir, self.held = d, 0
        run = self.i_run is not None and buttons[self.i_run] > 0
        key = keyboard_turn_deg(d, self.held, bool(run), self.calib.frame_skip) * self.calib.button_scale
        self.held = self.held + self.calib.frame_skip if d else 0
        return mouse, key


def shift_frame(frame: np.ndarray, px: int) -> np.ndarray:
    """Content moves left by ``px`` (turn right); the revealed edge repeats the border column."""
    w = frame.shape[1]
    px = max(-w, min(w, int(px)))
    if px == 0:
        return frame
    idx = np.clip(np.arange(w) + px, 0, w - 1)
    return frame[:, idx]


class _ShiftSession:
    def __init__(self, model: "ShiftModel", context: dict[str, Any]):
        self.model = model
        self.frame = np.array(context["frames"][-1])
        self.turn = _TurnModel(model.schema, model.calib)
        self.residual = 0.0  # sub-pixel shift carried over, so free-running does not lose it
        for b, a in zip(context["buttons"], context["axes"]):  # replay context actions: key-hold state
            self.turn.yaw(b, a)

    def step(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        mouse, key = self.turn.yaw(buttons, axes)
        px = (mouse + key) * self.model.calib.px_per_deg + self.residual
        ipx = int(round(px))
        self.residual = px - ipx
        self.frame = shift_frame(self.frame, ipx)
        return self.frame, _silence(self.model.audio_spec)


class ShiftModel:
    """The previous frame shifted horizontally by the commanded turn, with silence."""

    name = "baseline:shift"
    context_steps = 4  # enough past actions to know how long a turn key has been held

    def __init__(self, schema: ActionSchema, resolution: tuple[int, int], audio_spec: dict[str, int] | None = None,
                 calib: ShiftCalibration | None = None):
        self.schema, self.resolution, self.audio_spec = schema, tuple(resolution), audio_spec
        self.calib = calib or ShiftCalibration(px_per_deg=default_px_per_deg(resolution[1]))

    def open(self, context: dict[str, Any], seed: int = 0) -> _ShiftSession:
        return _ShiftSession(self, context)


# ----- calibration from real frames ---------------------------------------------------------
def _gray(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames, np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def estimate_shifts(prev: np.ndarray, nxt: np.ndarray, max_shift: int | None = None) -> np.ndarray:
    """Horizontal content shift (px, + = moved left) from each ``prev[i]`` to ``nxt[i]``.

    Least-squares match of the overlapping columns over integer shifts, refined to sub-pixel
    with a parabola through the best three. The bottom quarter of rows (weapon, HUD) is ignored.
    """
    a, b = _gray(prev), _gray(nxt)  # (N, H, W)
    n, h, w = a.shape
    a, b = a[:, : max(1, (3 * h) // 4)], b[:, : max(1, (3 * h) // 4)]
    m = max_shift or w // 4
    errs = np.empty((n, 2 * m + 1), np.float64)
    for j, d in enumerate(range(-m, m + 1)):
        if d >= 0:
            diff = b[:, :, : w - d] - a[:, :, d:]
        else:
            diff = b[:, :, -d:] - a[:, :, : w + d]
        errs[:, j] = (diff ** 2).mean(axis=(1, 2))
    i = errs.argmin(axis=1)
    ii = np.clip(i, 1, 2 * m - 1)
    l_, c, r = errs[np.arange(n), ii - 1], errs[np.arange(n), ii], errs[np.arange(n), ii + 1]
    den = l_ - 2 * c + r
    off = np.where((i == ii) & (den > 1e-9), 0.5 * (l_ - r) / np.where(den > 1e-9, den, 1.0), 0.0)
    return (i - m + np.clip(off, -0.5, 0.5)).astype(np.float64)


def calibrate_shift(episodes: Sequence[Any], max_pairs: int = 1500, seed: int = 0) -> ShiftCalibration:
    """Estimate :class:`ShiftCalibration` from real consecutive frames of ``episodes``."""
    first = episodes[0]
    schema: ActionSchema = first.schema
    h, w = first.resolution
    fs = first.meta.get("frame_skip")
    fs = int(fs) if isinstance(fs, int) and fs > 0 else max(1, int(round(35.0 / first.tick_rate)))
    calib = ShiftCalibration(px_per_deg=default_px_per_deg(w), frame_skip=fs)
    moves = [schema.buttons.index(b) for b in MOVE_BUTTONS if b in schema.buttons]
    rng = np.random.default_rng(seed)
    # candidates: (episode, t, mouse_deg, key_deg)
    mouse_c, key_c = [], []
    for ei, ep in enumerate(episodes):
        btn, ax = np.asarray(ep.buttons), np.asarray(ep.axes)
        turn = _TurnModel(schema, calib)
        still = np.ones(len(ep), bool) if not moves else btn[:, moves].sum(1) == 0
        for t in range(len(ep) - 1):
            mouse, key = turn.yaw(btn[t], ax[t])
            if not still[t]:
                continue
            if key == 0 and abs(mouse) >= 1.0:
                mouse_c.append((ei, t, mouse))
            elif key != 0 and abs(mouse) < 0.05:
                key_c.append((ei, t, key))

    def measure(cands: list) -> tuple[np.ndarray, np.ndarray]:
        if len(cands) > max_pairs:
            cands = [cands[i] for i in sorted(rng.choice(len(cands), max_pairs, replace=False))]
        prev = np.stack([episodes[e].frames[t] for e, t, _ in cands])
        nxt = np.stack([episodes[e].frames[t + 1] for e, t, _ in cands])
        return estimate_shifts(prev, nxt), np.array([c[2] for c in cands])

    if len(mouse_c) >= 10:
        sh, deg = measure(mouse_c)
        ratio = sh / deg
        ok = np.abs(sh) < (w // 4) - 1  # shifts at the search limit are failures, not data
        if ok.sum() >= 10:
            calib.px_per_deg = float(np.median(ratio[ok]))
            calib.mouse_pairs = int(ok.sum())
            calib.mouse_ratio_iqr = (float(np.percentile(ratio[ok], 25)), float(np.percentile(ratio[ok], 75)))
            calib.source = "data"
    if len(key_c) >= 10 and calib.px_per_deg > 0:
        sh, deg = measure(key_c)
        ok = np.abs(sh) < (w // 4) - 1
        if ok.sum() >= 10:
            calib.button_scale = float(np.median(sh[ok] / (deg[ok] * calib.px_per_deg)))
            calib.button_pairs = int(ok.sum())
    return calib
