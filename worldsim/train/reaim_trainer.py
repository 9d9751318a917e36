"""``worldsim train``'s ``reaim`` stage: a :class:`~worldsim.model.reaim_net.ReaimNet` taught the
pixel turn prior of a trained world.

Examples are the recorded latents with the yaw of the action that followed each (the turn
weights of the world's dynamics read it from the buttons and mouse, as at run time), only turns
the world re-aims (``|yaw|`` ≥ ``min_deg``), half of them mirrored so both directions are seen
alike. Each example's target is computed once by the world's pixel prior (decode, warp, encode:
:class:`~worldsim.model.view_warp.LatentReaim`; :func:`pixel_prior`); the net then trains on those pairs.
The last ``val_frac`` of the pairs are held out and scored against the latent slide (the net's
starting point) and against keeping the latent as it is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.errors import check_limits
from worldsim.model.action_inputs import turn_features
from worldsim.model.reaim_net import ReaimNet, ReaimNetConfig, reaim_loss
from worldsim.model.view_warp import LatentReaim
from worldsim.train.latents import LatentStore
from worldsim.train.loop import ProgressLog, TrainingStopped, autocast, save_train_state, stop_requested

NAME = "reaim"  # the component: <run>/reaim.safetensors + reaim.json


@dataclass
class ReaimTrainConfig:
    steps: int = 0          # 0: no such stage (a config turns it on)
    pairs: int = 32768      # (latent, yaw) examples, targets computed once by the pixel prior
    val_frac: float = 0.05  # held out from training, scored at the end
    batch: int = 128
    lr: float = 1e-3
    warmup: int = 100
    width: int = 96         # ReaimNet's hidden channels
    sub: int = 0            # ReaimNet's finer grid (columns per cell; 0: none)
    fine_width: int = 48    # and its channels
    flip: float = 0.5       # fraction of examples whose yaw is mirrored
    min_deg: float = 1.0    # examples turn at least this much (or the world's dynamics.reaim_min_deg, if more):
                            # the turns a world re-aims (the default world keeps its latent under 1°)
    target_batch: int = 256  # pixel-prior calls per batch while the targets are computed
    log_every: int = 50
    save_every: int = 500

    def validate(self) -> None:
        check_limits(self, "reaim_train", {"steps": 0, "pairs": 2, "batch": 1, "lr": 1e-12, "warmup": 0, "width": 1,
                                          "target_batch": 1, "log_every": 1, "save_every": 1, "sub": 0, "fine_width": 1,
                                          "min_deg": 0},
                     within=("val_frac", "flip"))


def turn_yaw(store: LatentStore, turn_weights: tuple[float, ...]) -> np.ndarray:
    """Rightward yaw (degrees) each recorded step's action commands, (T,), as the dynamics reads it."""
    names = store.info["schema"]
    feats = turn_features(torch.from_numpy(store.buttons.astype(np.float32)), torch.from_numpy(store.axes.astype(np.float32)),
                          list(names["buttons"]), list(names["axes"]))  # (T, 3)
    return (feats @ torch.tensor(turn_weights, dtype=torch.float32)).numpy()


@torch.no_grad()
def make_pairs(world: Any, reaim: LatentReaim, store: LatentStore, cfg: ReaimTrainConfig, seed: int, progress: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents (n, C, h, w), yaw (n,), targets (n, C, h, w)) float32: recorded latents turned by
    the recorded yaw (some mirrored), re-aimed by the pixel turn prior ``reaim`` of ``world``."""
    dyn = world.dynamics
    yaw_all = turn_yaw(store, dyn.cfg.turn_weights)
    pool = np.flatnonzero(np.abs(yaw_all) >= max(dyn.cfg.reaim_min_deg, cfg.min_deg, 1e-3))
    if len(pool) < 2:
        raise ValueError("the recordings hold (almost) no turns the world re-aims: nothing to learn from")
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, size=cfg.pairs, replace=len(pool) < cfg.pairs)
    yaw = yaw_all[idx] * np.where(rng.random(cfg.pairs) < cfg.flip, -1.0, 1.0)
    z = torch.from_numpy(store.frames[idx].astype(np.float32))  # (n, C, h, w)
    yaw_t = torch.from_numpy(yaw.astype(np.float32))
    out = torch.empty_like(z)
    t0 = time.time()
    for s in range(0, cfg.pairs, cfg.target_batch):
        sl = slice(s, min(cfg.pairs, s + cfg.target_batch))
        with world.autocast:
            out[sl] = reaim._reaim(z[sl].to(world.device), yaw_t[sl].to(world.device), None).float().cpu()
        if progress and (s // cfg.target_batch) % 16 == 0:
            print(f"reaim targets: {sl.stop}/{cfg.pairs} ({time.time() - t0:.0f} s)", flush=True)
    return z, yaw_t, out


def pixel_prior(out: Path, world: Any) -> LatentReaim:
    """The pixel turn prior of the world in ``out``: its own, or, for a run whose dynamics still
    slides latents, the one ``worldsim export --prior-space pixel`` gives it (decoded by the run's
    ``frame_codec_prior``, else the codec its decoder stage started from, else the frame codec)."""
    from worldsim.train.decoder_adv import base_codec

    if world.dynamics.cfg.prior_space == "pixel":
        return world.dynamics.reaim
    base = None if world.prior_codec is not None else base_codec(out)
    return world.pixel_reaim(None if base is None else base.to(world.device))


def _scores(net: ReaimNet, z: torch.Tensor, yaw: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Held-out mean squared error (standardised latent units) of the net, the slide and no turn."""
    from worldsim.model.action_inputs import shift_latent
    with torch.no_grad():
        slide = shift_latent(z, yaw * net.cfg.cells_per_degree)
        return {"val_mse": float(reaim_loss(net(z, yaw), target)), "val_mse_slide": float(reaim_loss(slide, target)),
                "val_mse_keep": float(reaim_loss(z, target))}


def train_reaim(out: str | Path, store: LatentStore, cfg: ReaimTrainConfig, seed: int = 0, resume: bool = False,
                max_steps: int | None = None, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Train ``<out>/reaim.*`` for the world in ``out`` (a world turns with it where its dynamics uses
    the pixel turn prior: its own, or after ``worldsim export --prior-space pixel``)."""
    from worldsim.model.checkpoint import read_component_json, save_component
    from worldsim.model.world_model import WorldModel
    from worldsim.train.loop import resume_state

    cfg.validate()
    out = Path(out)
    world = WorldModel.load(out, device=device, learned_reaim=False)  # the targets come from the pixel prior
    dcfg = world.dynamics.cfg
    if not dcfg.turn_weights:
        raise ValueError(f"{out}: the reaim stage learns a turn prior, and this world's dynamics has no turn "
                         "weights (its recordings showed no turning)")
    ncfg = ReaimNetConfig(latent_channels=dcfg.latent_channels, latent_size=dcfg.latent_size, width=cfg.width,
                          cells_per_degree=dcfg.px_per_degree * dcfg.latent_size / dcfg.frame_size,
                          sub=cfg.sub, fine_width=cfg.fine_width, fov=world.memory_cfg.fov)
    net = ReaimNet(ncfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    start = resume_state(out, NAME, net, opt) if resume else 0
    if start >= cfg.steps:
        return {"steps": start, "skipped": "already trained"}
    t0 = time.time()
    z, yaw, target = make_pairs(world, pixel_prior(out, world), store, cfg, seed, progress)
    del world
    n_val = max(1, int(round(cfg.val_frac * len(z))))
    n_tr = len(z) - n_val
    total = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)
    gen = torch.Generator().manual_seed(seed + start)
    log = ProgressLog(NAME, start, total, out / f"{NAME}.log.jsonl", enabled=progress, every=cfg.log_every)
    meta_prev = read_component_json(out, NAME).get("meta", {}) if start and (out / f"{NAME}.json").exists() else {}

    def save(step: int) -> None:
        scores = _scores(net.eval(), z[n_tr:].to(device), yaw[n_tr:].to(device), target[n_tr:].to(device))
        net.train()
        save_component(out, NAME, net, ncfg, meta={
            "train_steps": step, "pairs": len(z), "held_out": n_val, "batch": cfg.batch, "lr": cfg.lr,
            "wall_s": round(float(meta_prev.get("wall_s", 0.0)) + time.time() - t0, 1), **scores,
            "note": "imitates the world's pixel turn prior (decode, re-aim, encode) in latent space"})
        save_train_state(out, NAME, step, opt)

    net.train()
    step = start
    while step < total and not stop_requested():
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1)) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.randint(0, n_tr, (cfg.batch,), generator=gen)
        with autocast(device):
            loss = reaim_loss(net(z[pick].to(device), yaw[pick].to(device)), target[pick].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        log.update(step, cfg.batch, loss=loss.item(), lr=lr)
        if step % cfg.save_every == 0 or step == total or stop_requested():
            save(step)
    log.close()
    if stop_requested():
        raise TrainingStopped(f"{NAME} at step {step}" + (" (saved)" if step > start else ""))
    return {"steps": step, **read_component_json(out, NAME).get("meta", {})}
