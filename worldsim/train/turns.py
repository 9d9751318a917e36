"""How training turns the camera: the yaw each action commands, fitted from recorded poses
(:func:`fit_turn_weights`, ``DynamicsConfig.turn_weights``), whether the data's camera turns at all
(:func:`camera_turns`: a top-down or fixed camera gets no turn prior), and the pixel turn prior's
re-aim as the dynamics sees it while training (:func:`training_reaim`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from worldsim.data.episode import Episode
from worldsim.model.action_inputs import turn_features
from worldsim.model.view_warp import LatentReaim
from worldsim.train.loop import autocast


def fit_turn_weights(episodes: Sequence[Episode]) -> tuple[float, ...]:
    """Least-squares fit of rightward yaw per tick (deg) on :func:`turn_features`, from poses."""
    feats, yaw = [], []
    for e in episodes:
        if e.pose is None or len(e) < 2:
            continue
        p = np.asarray(e.pose, np.float64)
        d = -((p[1:, 3] - p[:-1, 3] + 180.0) % 360.0 - 180.0)  # ViZDoom yaw grows to the left
        f = turn_features(torch.from_numpy(np.array(e.buttons[:-1])), torch.from_numpy(np.array(e.axes[:-1])),
                          list(e.schema.buttons), list(e.schema.axes))
        feats.append(f.numpy())
        yaw.append(d)
    if not feats:
        return ()
    w, *_ = np.linalg.lstsq(np.concatenate(feats), np.concatenate(yaw), rcond=None)
    return tuple(round(float(x), 4) for x in w)


def camera_turns(episodes: Sequence[Episode], weights: tuple[float, ...], px_per_degree: float,
                 min_pairs: int = 20, max_pairs: int = 400) -> bool:
    """Whether the picture slides when the player turns, as the turn prior assumes (a first-person
    camera): on steps whose fitted yaw is ≥ 3°, the measured horizontal shift between the real
    frames must reach a quarter of what the prior predicts. A top-down or fixed camera (a toy
    arena, a board game) turns nothing, and a prior there would slide every turning frame for the
    network to undo. Too few turning steps to tell: keep the prior."""
    from worldsim.eval.baselines import estimate_shifts

    w = np.asarray(weights, np.float64)
    prev, nxt, want = [], [], []
    for e in episodes:
        if len(e) < 2:
            continue
        f = turn_features(torch.from_numpy(np.array(e.buttons[:-1])), torch.from_numpy(np.array(e.axes[:-1])),
                          list(e.schema.buttons), list(e.schema.axes)).numpy()
        yaw = f @ w  # (T-1,) degrees to the right
        for t in np.flatnonzero(np.abs(yaw) >= 3.0)[: max_pairs - len(want)]:
            prev.append(e.frames[t])
            nxt.append(e.frames[t + 1])
            want.append(abs(yaw[t]) * px_per_degree * e.resolution[1] / 64)
        if len(want) >= max_pairs:
            break
    if len(want) < min_pairs:
        return True
    prev, nxt = np.stack(prev), np.stack(nxt)
    same = (prev == nxt).reshape(len(prev), -1).all(1)  # a picture that did not change moved by 0 (a periodic
    got = np.where(same, 0.0, np.abs(estimate_shifts(prev, nxt)))  # texture would tie 0 with its period)
    return float(np.median(got)) >= 0.25 * float(np.median(want))


def training_reaim(out: Path, device: str, min_deg: float = 0.0,
                   learned: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pixel-space turn prior's re-aim for training: the run's frame codec, frozen (its
    ``frame_codec_prior`` when it keeps one, as the world will decode with), the screen-fixed pixels of its
    world.json's ``memory.overlay`` (as the runtime uses them), under the training's autocast.
    ``learned``: the run's turn prior learned in latent space instead (``reaim.safetensors``, frozen), the
    one a world that ships it turns with — training then sees the prior the world plays with, and no
    picture is decoded and encoded (``dynamics_train.learned_prior``)."""
    from worldsim.model.checkpoint import load_component
    from worldsim.model.reaim_net import LearnedReaim, ReaimNet, ReaimNetConfig
    from worldsim.model.world_model import REAIM
    if learned:
        if not (out / f"{REAIM}.json").exists():
            raise ValueError(f"{out}: dynamics_train.learned_prior needs the run's learned turn prior ({REAIM}.json: "
                             "worldsim train --stage reaim, or a copy of a world that ships one)")
        net, _ = load_component(out, REAIM, ReaimNet, ReaimNetConfig)
        base: LatentReaim = LearnedReaim(net.float().to(device).eval().requires_grad_(False), min_deg)
    else:
        base = _picture_reaim(out, device, min_deg)

    def reaim(z: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            return base(z, yaw)
    return reaim


def _picture_reaim(out: Path, device: str, min_deg: float) -> LatentReaim:
    """The pixel prior itself: decode with the run's (faithful) codec, re-aim the picture, encode."""
    from worldsim.model.checkpoint import load_component
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
    from worldsim.model.view_warp import runs_to_mask
    from worldsim.model.world_model import PRIOR_CODEC
    name = PRIOR_CODEC if (out / f"{PRIOR_CODEC}.json").exists() else "frame_codec"  # as WorldModel picks
    if not (out / f"{name}.json").exists():
        raise ValueError(f"{out}: dynamics.prior_space 'pixel' needs the run's frame codec (frame_codec.json)")
    codec, _ = load_component(out, name, FrameCodec, FrameCodecConfig)
    codec = codec.float().to(device).eval().requires_grad_(False)  # a bf16 export trains in fp32 + autocast
    mem: dict[str, Any] = {}
    if (out / "world.json").exists():
        mem = json.loads((out / "world.json").read_text()).get("memory") or {}
    r = codec.cfg.resolution
    keep = torch.from_numpy(runs_to_mask(mem["overlay"], r, r)) if mem.get("overlay") else None
    return LatentReaim(codec, float(mem.get("fov", 90.0)), keep, min_deg)
