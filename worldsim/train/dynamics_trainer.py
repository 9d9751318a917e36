"""Train the dynamics model on a latent store with flow matching.

Each sample is a window of ``context`` consecutive ticks. Its clean blocks (lightly noised
at a random level ``tau`` that the network is told) and noisy copies of ticks 1.. (at
flow time ``t``) are packed into one sequence (see :mod:`worldsim.model.dynamics`), so
one forward trains ``context - 1`` next-tick predictions, each with clean context, as at
inference. Loss: MSE between predicted and true velocity ``eps - x0`` on frame and audio
tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.data.episode import Episode
from worldsim.model.checkpoint import save_component
from worldsim.model.dynamics import Dynamics, DynamicsConfig, action_vector, turn_features, turn_prior
from worldsim.train.latents import LatentStore
from worldsim.train.loop import Prefetcher, ProgressLog, autocast, resume_state, save_train_state


@dataclass
class DynamicsTrainConfig:
    steps: int = 20000
    batch: int = 16
    lr: float = 6e-4
    warmup: int = 300
    weight_decay: float = 0.01
    tau_max: float = 0.2        # context noise level drawn from U(0, tau_max) per clean block
    tau_zero_prob: float = 0.2  # fraction of clean blocks left un-noised
    audio_weight: float = 1.0
    save_every: int = 500
    log_every: int = 25
    eval_every: int = 0         # 0 = no periodic quick eval


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


class WindowSampler:
    def __init__(self, store: LatentStore, length: int, seed: int):
        self.store, self.length = store, length
        self.starts = store.window_starts(length)
        if len(self.starts) == 0:
            raise ValueError(f"no episode is at least {length} ticks long")
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        s = self.rng.choice(self.starts, n)
        idx = s[:, None] + np.arange(self.length)[None]  # (B, T)
        st = self.store
        out = {"frames": torch.from_numpy(st.frames[idx].astype(np.float32)),
               "buttons": torch.from_numpy(st.buttons[idx]), "axes": torch.from_numpy(st.axes[idx])}
        if st.audio is not None:
            out["audio"] = torch.from_numpy(st.audio[idx].astype(np.float32))
        return out


def pack_inputs(model: Dynamics, batch: dict[str, torch.Tensor], tcfg: DynamicsTrainConfig, names: tuple[list, list],
                gen: torch.Generator | None = None) -> dict[str, Any]:
    """Build the packed clean+noisy sequence and velocity targets for one batch of windows."""
    cfg = model.cfg
    z = batch["frames"]  # (B, T, C, h, w)
    B, T = z.shape[:2]
    dev = z.device
    rnd = lambda *s: torch.randn(*s, generator=gen, device=dev)  # noqa: E731
    uni = lambda *s: torch.rand(*s, generator=gen, device=dev)  # noqa: E731
    a = batch.get("audio")
    a = a.flatten(2) if a is not None else None  # (B, T, Ca·Pa)
    # clean context, lightly noised
    tau = uni(B, T) * tcfg.tau_max * (uni(B, T) > tcfg.tau_zero_prob)
    zc = (1 - tau[..., None, None, None]) * z + tau[..., None, None, None] * rnd(*z.shape)
    ac = None if a is None else (1 - tau[..., None]) * a + tau[..., None] * rnd(*a.shape)
    # actions: block i is conditioned on the action taken after tick i-1
    act = action_vector(batch["buttons"], batch["axes"], cfg)  # (B, T, Dact)
    act = torch.cat([torch.zeros_like(act[:, :1]), act[:, :-1]], dim=1)
    feats = turn_features(batch["buttons"], batch["axes"], *names)  # (B, T, 3)
    prev = zc[:, :-1].flatten(0, 1)  # (B·(T-1), C, h, w)
    pri = turn_prior(prev, feats[:, :-1].flatten(0, 1), cfg).view(B, T - 1, *z.shape[2:])
    pri = torch.cat([torch.zeros_like(z[:, :1]), pri], dim=1)  # (B, T, C, h, w)
    # noisy targets: ticks 1..T-1 at flow time t (logit-normal)
    t = torch.sigmoid(rnd(B, T - 1))
    eps = rnd(B, T - 1, *z.shape[2:])
    zt = (1 - t[..., None, None, None]) * z[:, 1:] + t[..., None, None, None] * eps
    v_frame = model.to_tokens(eps - z[:, 1:])  # (B, T-1, P, Dt)
    at, v_audio = None, None
    if a is not None:
        eps_a = rnd(B, T - 1, a.shape[-1])
        at = (1 - t[..., None]) * a[:, 1:] + t[..., None] * eps_a
        v_audio = eps_a - a[:, 1:]
    frame = model.to_tokens(torch.cat([zc, zt], dim=1))  # (B, 2T-1, P, Dt)
    prior = model.to_tokens(torch.cat([pri, pri[:, 1:]], dim=1))
    audio = None if a is None else torch.cat([ac, at], dim=1)  # (B, 2T-1, Da)
    level = torch.cat([tau, t], dim=1)
    action = torch.cat([act, act[:, 1:]], dim=1)
    times = torch.cat([torch.arange(T), torch.arange(1, T)]).to(dev)
    noisy = torch.cat([torch.zeros(T, dtype=torch.bool), torch.ones(T - 1, dtype=torch.bool)]).to(dev)
    return {"inputs": (frame, audio, prior, level, action, times, noisy), "v_frame": v_frame, "v_audio": v_audio, "T": T}


def dynamics_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], tcfg: DynamicsTrainConfig,
                  names: tuple[list, list], device: str) -> tuple[torch.Tensor, dict[str, float]]:
    core = model.module if hasattr(model, "module") else model
    p = pack_inputs(core, batch, tcfg, names)
    T = p["T"]
    with autocast(device):
        pf, pa = model(*p["inputs"])
    lf = F.mse_loss(pf[:, T:].float(), p["v_frame"])
    stats = {"frame": lf.item()}
    loss = lf
    if pa is not None and p["v_audio"] is not None:
        la = F.mse_loss(pa[:, T:].float(), p["v_audio"])
        loss = loss + tcfg.audio_weight * la
        stats["audio"] = la.item()
    return loss, stats


def train_dynamics(store: LatentStore, out: str | Path, cfg: DynamicsConfig, tcfg: DynamicsTrainConfig,
                   seed: int = 0, resume: bool = False, max_steps: int | None = None, progress: bool = True,
                   device: str = "cpu", on_eval: Callable[[int], None] | None = None) -> dict[str, Any]:
    import torch.distributed as dist
    out = Path(out)
    ddp = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if ddp else 0
    world = dist.get_world_size() if ddp else 1
    torch.manual_seed(seed)
    model = Dynamics(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.98))
    step = resume_state(out, "dynamics", model, opt) if resume else 0
    # predictions seen so far: a resumed run may have used another batch size or world size
    seen0, step0 = 0, step
    if step and (out / "dynamics.json").exists():
        from worldsim.model.checkpoint import read_component_json
        seen0 = int(read_component_json(out, "dynamics").get("meta", {}).get("predictions_seen", 0))
    net: torch.nn.Module = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device == "cpu" else [torch.device(device).index])
    total = tcfg.steps if max_steps is None else min(tcfg.steps, step + max_steps)
    schema = store.info["schema"]
    names = (list(schema["buttons"]), list(schema["axes"]))
    sampler = WindowSampler(store, cfg.context, seed * 1000 + rank + 7919 * step)
    fetch = Prefetcher(lambda: sampler.batch(tcfg.batch))
    log = ProgressLog("dynamics", step, total, out / "dynamics.log.jsonl" if rank == 0 else None,
                      enabled=progress and rank == 0, every=tcfg.log_every)
    meta_base = {"data": {k: store.info.get(k) for k in ("wad", "maps", "tick_rate", "resolution", "audio", "schema")}}
    net.train()
    while step < total:
        lr = tcfg.lr * min(1.0, (step + 1) / tcfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(step / max(tcfg.steps, 1), 1.0))))
        for g in opt.param_groups:
            g["lr"] = float(lr)
        batch = {k: v.to(device) for k, v in fetch.next().items()}
        loss, stats = dynamics_loss(net, batch, tcfg, names, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        log.update(step, tcfg.batch * world * (cfg.context - 1), loss=loss.item(), lr=float(lr), **stats)
        if rank == 0 and (step % tcfg.save_every == 0 or step == total):
            samples = seen0 + (step - step0) * tcfg.batch * world * (cfg.context - 1)
            save_component(out, "dynamics", model, cfg, meta={**meta_base, "train_steps": step, "predictions_seen": samples})
            save_train_state(out, "dynamics", step, opt)
        if rank == 0 and on_eval is not None and tcfg.eval_every and step % tcfg.eval_every == 0:
            on_eval(step)
    fetch.close()
    log.close()
    return {"steps": step}
