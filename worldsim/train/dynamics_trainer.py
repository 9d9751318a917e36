"""Train the dynamics model on a latent store with flow matching.

Each sample is a window of ``context`` consecutive ticks. Its clean blocks (lightly noised
at a random level ``tau`` that the network is told) and noisy copies of ticks 1.. (at
flow time ``t``) are packed into one sequence (see :mod:`worldsim.model.dynamics`), so
one forward trains ``context - 1`` next-tick predictions, each with clean context, as at
inference. Loss: MSE between predicted and true velocity ``eps - x0`` on frame and audio
tokens.

With ``memory_input`` the noisy blocks also receive what the scene memory would retrieve
for them (:mod:`worldsim.train.recall`: the best-matching view of the same episode beyond the
context window, by recorded pose, slid to the current heading), lightly noised, its weight
scaled down at random as the runtime's confidence in generated views is, and sometimes
dropped; ``memory_windows`` of the windows are drawn among those that have such a memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.data.episode import Episode
from worldsim.errors import check_limits
from worldsim.model.checkpoint import save_component
from worldsim.model.action_inputs import action_vector, shift_latent, turn_features, turn_prior
from worldsim.model.dynamics import Dynamics, DynamicsConfig
from worldsim.model.memory import MemoryConfig
from worldsim.precision import PRECISIONS
from worldsim.train.latents import LatentStore
from worldsim.train.adversarial import Adversary, clean_estimate
from worldsim.train.distill import PairPool, couple, load_teacher, student_times, teacher_sample
from worldsim.train.recall import RecallTargets, recall_targets
from worldsim.train.rollout import self_rollout
from worldsim.train.turns import training_reaim
from worldsim.train.loop import (Prefetcher, ProgressLog, TrainingStopped, autocast, resume_state, save_train_state,
                                 stop_requested)


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
    schedule_start: int = 0     # the cosine runs from this step to ``steps`` (a fine-tune's own schedule)
    # memory input (DynamicsConfig.memory_input): see the module docstring
    memory_windows: float = 0.5  # fraction of windows drawn among those with a retrieved memory
    memory_drop: float = 0.1     # a retrieved memory is withheld this often
    memory_min_age: int = 0      # retrieve views at least this old (0 = context + 1: just outside the window)
    # exposure bias: in this fraction of windows, context ticks 1..rollout_ticks are the model's
    # own generations (no gradient, ``rollout_steps`` Euler steps) while the targets stay real, so
    # the network learns to pull a drifting context back to the real world (scheduled sampling)
    rollout_frac: float = 0.0
    rollout_ticks: int = 3
    rollout_steps: int = 2
    # train only the parameters whose names start with one of these (empty = all); e.g.
    # ["memory_in.weight"] teaches a trained world to use memories while leaving every tick
    # without one bit-identical (the layer's bias stays at zero)
    train_only: tuple[str, ...] = ()
    # few-step distillation (worldsim.train.distill): targets sampled by a frozen teacher world with
    # ``distill_steps`` Euler steps from the training noise, so that the runtime's few steps land
    # where the teacher's many do (sharper frames); 0 = off
    distill_steps: int = 0
    distill_teacher: str = ""      # a world or run directory holding the teacher's dynamics
    distill_frac: float = 1.0      # windows with teacher targets (the rest keep the real tick)
    distill_student_steps: int = 2  # the sampler steps the student is distilled for
    distill_at_steps: float = 0.5  # targets placed exactly at that sampler's flow times
    # each teacher-sampled batch trains this many student steps (each at fresh flow times): the
    # teacher's 16 Euler steps are ~70 % of a distillation step on a CPU; 1 = a new one every step
    distill_reuse: int = 1
    # the teacher's arithmetic: "auto" = what a world loaded on this device runs in (on a CPU with
    # fbgemm and no AMX: int8 linears around bf16). Measured on an AVX512-BF16 EPYC, one thread:
    # the shipped teacher's 16 steps at batch 16 7.2 -> 4.7 s, a critic + rollout distillation step
    # 5.0 -> 4.4 s; its samples 2.6 % (rms) from fp32's where bf16's are 0.2 % — the int8 world
    # `worldsim eval` scores like fp32's (README, Speed). "int8" asks for it anywhere it runs;
    # "bf16" keeps float linears in the training's autocast, "fp32" runs the teacher without it
    distill_precision: str = "auto"
    # the sound's targets in distilled windows: "teacher" (its samples, like the frames') or "real"
    # (the recorded tick's audio, plain flow matching at the same flow times). A 2-step student
    # can sound only as often as its teacher does; the shipped world misses most real onsets by
    # staying silent (README, session 17), which the recorded targets teach and the teacher's cannot
    distill_audio: str = "teacher"
    # adversarial sharpening (worldsim.train.adversarial): a latent patch critic's hinge gradient on
    # the network's clean-tick estimates, times this weight; 0 = off
    adv_weight: float = 0.0
    adv_lr: float = 2e-4
    # switch the dynamics' turn prior ("latent" slide or "pixel" re-aim, DynamicsConfig.prior_space)
    # from this stage on — a fine-tune of trained weights to the other prior; "" keeps the model's
    prior_space: str = ""
    # with the pixel prior: turn through the run's learned turn prior (reaim.safetensors) as a world
    # that ships one plays, instead of decoding, re-aiming and encoding pictures (worldsim/train/turns.py)
    learned_prior: bool = False

    def validate(self) -> None:
        """Clear errors for values no run could use (checked when a config file is read)."""
        check_limits(self, "dynamics_train", {"steps": 0, "batch": 1, "lr": 1e-12, "warmup": 0, "weight_decay": 0,
                                              "audio_weight": 0, "save_every": 1, "log_every": 1, "eval_every": 0,
                                              "schedule_start": 0, "memory_min_age": 0, "rollout_ticks": 1,
                                              "rollout_steps": 1},
                     within=("tau_max", "rollout_frac", "memory_windows", "memory_drop", "distill_frac",
                             "distill_at_steps", "tau_zero_prob"))
        if self.distill_steps < 0 or self.distill_student_steps < 1 or self.distill_reuse < 1:
            raise ValueError("dynamics_train.distill_steps must be >= 0, distill_student_steps and distill_reuse >= 1")
        if self.distill_steps and not self.distill_teacher:
            raise ValueError("dynamics_train.distill_steps > 0 needs distill_teacher (a world or run directory)")
        if self.distill_precision not in PRECISIONS:
            raise ValueError(f"dynamics_train.distill_precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.distill_precision!r}")
        if self.distill_audio not in ("teacher", "real"):
            raise ValueError(f"dynamics_train.distill_audio must be 'teacher' or 'real', got {self.distill_audio!r}")
        if self.adv_weight < 0 or self.adv_lr <= 0:
            raise ValueError("dynamics_train.adv_weight must be >= 0 and adv_lr > 0")
        if self.prior_space not in ("", "latent", "pixel"):
            raise ValueError(f"dynamics_train.prior_space must be '', 'latent' or 'pixel', got {self.prior_space!r}")


class WindowSampler:
    """Random windows of ``length`` ticks; with ``recall``, also each tick's remembered latent
    (``memory`` (B, T, C, h, w), ``memory_w`` (B, T), ``memory_dyaw`` (B, T)), and a fraction
    ``memory_windows`` of the windows drawn among those where a target tick has one."""

    def __init__(self, store: LatentStore, length: int, seed: int, recall: RecallTargets | None = None,
                 memory_windows: float = 0.0):
        self.store, self.length, self.recall = store, length, recall
        self.starts = store.window_starts(length)
        if len(self.starts) == 0:
            raise ValueError(f"no episode is at least {length} ticks long")
        self.rng = np.random.default_rng(seed)
        self.memory_windows, self.hit_starts = 0.0, self.starts[:0]
        if recall is not None:
            hit = recall.index >= 0
            any_hit = np.zeros(len(self.starts), bool)
            for j in range(1, length):  # targets are ticks 1..T-1 of a window
                any_hit |= hit[self.starts + j]
            self.hit_starts = self.starts[any_hit]
            self.memory_windows = memory_windows if len(self.hit_starts) else 0.0

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        s = self.rng.choice(self.starts, n)
        k = self.rng.random(n) < self.memory_windows
        if k.any():
            s[k] = self.rng.choice(self.hit_starts, int(k.sum()))
        idx = s[:, None] + np.arange(self.length)[None]  # (B, T)
        st = self.store
        # float16 here: half the bytes through the loader thread; the trainer casts on its device
        out = {"frames": torch.from_numpy(np.ascontiguousarray(st.frames[idx], np.float16)),
               "buttons": torch.from_numpy(st.buttons[idx]), "axes": torch.from_numpy(st.axes[idx])}
        if st.audio is not None:
            out["audio"] = torch.from_numpy(np.ascontiguousarray(st.audio[idx], np.float16))
        if self.recall is not None:
            mi = self.recall.index[idx]  # (B, T)
            out["memory"] = torch.from_numpy(np.ascontiguousarray(st.frames[np.maximum(mi, 0)], np.float16))
            out["memory_w"] = torch.from_numpy(np.where(mi >= 0, self.recall.weight[idx], 0.0).astype(np.float32))
            out["memory_dyaw"] = torch.from_numpy(self.recall.dyaw[idx].astype(np.float32))
        return out


def flow_times(*shape: int, gen: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training flow times: logit-normal (``sigmoid`` of a standard normal), mid-range times most."""
    return torch.sigmoid(torch.randn(*shape, generator=gen, device=device))


def pack_inputs(model: Dynamics, batch: dict[str, torch.Tensor], tcfg: DynamicsTrainConfig, names: tuple[list, list],
                gen: torch.Generator | None = None) -> dict[str, Any]:
    """Build the packed clean+noisy sequence and velocity targets for one batch of windows."""
    cfg = model.cfg
    z = batch["frames"].float()  # (B, T, C, h, w) real ticks: the targets
    zctx = batch["context"].float() if "context" in batch else z  # what the clean blocks show
    B, T = z.shape[:2]
    dev = z.device
    rnd = lambda *s: torch.randn(*s, generator=gen, device=dev)  # noqa: E731
    uni = lambda *s: torch.rand(*s, generator=gen, device=dev)  # noqa: E731
    a = batch.get("audio")
    a = a.float().flatten(2) if a is not None else None  # (B, T, Ca·Pa)
    # clean context, lightly noised
    tau = uni(B, T) * tcfg.tau_max * (uni(B, T) > tcfg.tau_zero_prob)
    zc = (1 - tau[..., None, None, None]) * zctx + tau[..., None, None, None] * rnd(*z.shape)
    ac = None if a is None else (1 - tau[..., None]) * a + tau[..., None] * rnd(*a.shape)
    # actions: block i is conditioned on the action taken after tick i-1
    act = action_vector(batch["buttons"], batch["axes"], cfg)  # (B, T, Dact)
    act = torch.cat([torch.zeros_like(act[:, :1]), act[:, :-1]], dim=1)
    feats = turn_features(batch["buttons"], batch["axes"], *names)  # (B, T, 3)
    prev = zc[:, :-1].flatten(0, 1)  # (B·(T-1), C, h, w)
    pri = turn_prior(prev, feats[:, :-1].flatten(0, 1), cfg, model.reaim).view(B, T - 1, *z.shape[2:])
    pri = torch.cat([torch.zeros_like(z[:, :1]), pri], dim=1)  # (B, T, C, h, w)
    # noisy targets: ticks 1..T-1 at flow time t
    t = flow_times(B, T - 1, gen=gen, device=dev)
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
    memory = None
    if model.memory_in is not None:
        w = torch.zeros(B, 2 * T - 1, device=dev)
        zm = None
        if "memory" in batch:  # noisy blocks take their remembered view; clean blocks none, as at inference
            m = batch["memory"][:, 1:].float()  # (B, T-1, C, h, w)
            cells = batch["memory_dyaw"][:, 1:].flatten() * cfg.px_per_degree * cfg.latent_size / cfg.frame_size
            m = shift_latent(m.flatten(0, 1), cells).view_as(m)
            tau_m = uni(B, T - 1) * tcfg.tau_max
            m = (1 - tau_m[..., None, None, None]) * m + tau_m[..., None, None, None] * rnd(*m.shape)
            # the runtime's weight is score × confidence, and generated views are trusted less
            conf = torch.where(uni(B, T - 1) < 0.5, torch.ones(B, T - 1, device=dev), 0.2 + 0.8 * uni(B, T - 1))
            wm = batch["memory_w"][:, 1:] * conf * (uni(B, T - 1) >= tcfg.memory_drop)
            w[:, T:] = wm
            zm = torch.cat([torch.zeros_like(z), m], dim=1)  # (B, 2T-1, C, h, w)
        memory = model.memory_tokens(zm, w)  # (B, 2T-1, P, Dt+1)
    return {"inputs": (frame, audio, prior, level, action, times, noisy, memory), "v_frame": v_frame,
            "v_audio": v_audio, "T": T, "t": t, "real": z, "eps_frame": model.to_tokens(eps),
            "eps_audio": None if a is None else eps_a}


def dynamics_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], tcfg: DynamicsTrainConfig,
                  names: tuple[list, list], device: str, teacher: Dynamics | None = None,
                  pool: PairPool | None = None, adversary: Adversary | None = None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """``pool``: teacher-coupled batches kept for reuse (``distill_reuse`` > 1); ``batch`` is
    not used on a step that draws from it. ``adversary``: steps its critic on this batch and adds
    ``adv_weight`` × its term (see :mod:`worldsim.train.adversarial`)."""
    core = model.module if hasattr(model, "module") else model

    def packed() -> dict[str, Any]:
        b = {**batch, "context": self_rollout(core, batch, tcfg, names, device)} if tcfg.rollout_frac > 0 else batch
        return pack_inputs(core, b, tcfg, names)

    if teacher is not None and tcfg.distill_steps > 0:
        pair = pool.draw() if pool is not None else None
        if pair is None:
            p = packed()
            pick = torch.rand(p["t"].shape[0], device=p["t"].device) < tcfg.distill_frac
            xs, xa = (teacher_sample(teacher, p, tcfg.distill_steps, device, pick, amp=tcfg.distill_precision != "fp32")
                      if pick.any() else (None, None))
            pair = (p, pick, xs, xa)
            if pool is not None:
                pool.add(pair)
        p, pick, xs, xa = pair
        p = dict(p)  # couple() rewrites the dict's entries (cloned tensors): the pooled pair stays as sampled
        if pick.any():
            t = p["t"] if pool is None else flow_times(*p["t"].shape, device=p["t"].device)
            if tcfg.distill_audio == "real" and p["v_audio"] is not None:
                xa = (p["eps_audio"] - p["v_audio"])[pick]  # the recorded ticks' audio (v = eps − x0)
            couple(p, xs, xa, pick, student_times(t, tcfg.distill_student_steps, tcfg.distill_at_steps))
    else:
        p = packed()
    T = p["T"]
    with autocast(device):
        pf, pa = model(*p["inputs"], first_output=T)  # the noisy blocks' velocities only (B, T-1, ·)
    lf = F.mse_loss(pf.float(), p["v_frame"])
    stats = {"frame": lf.item()}
    loss = lf
    if pa is not None and p["v_audio"] is not None:
        la = F.mse_loss(pa.float(), p["v_audio"])
        loss = loss + tcfg.audio_weight * la
        stats["audio"] = la.item()
    if adversary is not None and tcfg.adv_weight > 0:
        frame, level = p["inputs"][0], p["inputs"][3]
        x0 = clean_estimate(frame[:, T:].float(), level[:, T:].float(), pf.float())  # (B, T-1, P, Dt)
        fake = core.from_tokens(x0).flatten(0, 1)  # (B·(T-1), C, h, w)
        real = p["real"]  # (B, T, C, h, w): the recorded ticks
        prev = real[:, :-1].flatten(0, 1)
        stats.update(adversary.update(prev, real[:, 1:].flatten(0, 1), fake))
        lg = adversary.generator_loss(prev, fake)
        loss = loss + tcfg.adv_weight * lg
        stats["adv"] = lg.item()
    return loss, stats


def train_dynamics(store: LatentStore, out: str | Path, cfg: DynamicsConfig, tcfg: DynamicsTrainConfig,
                   seed: int = 0, resume: bool = False, max_steps: int | None = None, progress: bool = True,
                   device: str = "cpu", on_eval: Callable[[int], None] | None = None,
                   max_seconds: float | None = None) -> dict[str, Any]:
    import torch.distributed as dist
    out = Path(out)
    ddp = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if ddp else 0
    world = dist.get_world_size() if ddp else 1
    torch.manual_seed(seed)
    if tcfg.prior_space:
        cfg = dataclasses.replace(cfg, prior_space=tcfg.prior_space)
    model = Dynamics(cfg).to(device)
    if tcfg.learned_prior and cfg.prior_space != "pixel":
        raise ValueError("dynamics_train.learned_prior replaces the pixel turn prior: it needs dynamics.prior_space "
                         f"'pixel', the model has {cfg.prior_space!r}")
    if cfg.prior_space == "pixel":
        model.reaim = training_reaim(out, device, cfg.reaim_min_deg, tcfg.learned_prior)
    if tcfg.train_only:
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(k) for k in tcfg.train_only))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"dynamics_train.train_only {list(tcfg.train_only)} names no parameter of the model")
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.98))
    step = resume_state(out, "dynamics", model, opt) if resume else 0
    # predictions seen so far: a resumed run may have used another batch size or world size
    seen0, step0, history = 0, step, None
    if step and (out / "dynamics.json").exists():
        from worldsim.model.checkpoint import read_component_json
        prev_meta = read_component_json(out, "dynamics").get("meta", {})
        seen0 = int(prev_meta.get("predictions_seen", 0))
        history = prev_meta.get("history")  # how the weights came to be: a resumed run keeps it
    net: torch.nn.Module = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device == "cpu" else [torch.device(device).index])
    total = tcfg.steps if max_steps is None else min(tcfg.steps, step + max_steps)
    schema = store.info["schema"]
    names = (list(schema["buttons"]), list(schema["axes"]))
    recall = None
    if cfg.memory_input:
        if store.pose is None:
            raise ValueError("dynamics.memory_input needs recorded poses in the data (pose.npy) to train the memory")
        recall = recall_targets(store.pose, store.bounds, MemoryConfig(), tcfg.memory_min_age or cfg.context + 1)
        if rank == 0 and progress:
            print(f"memory input: {recall.hit_fraction:.0%} of ticks have a view to recall")
    teacher, pool = None, None
    if tcfg.distill_steps > 0:
        tcfg.validate()
        teacher = load_teacher(tcfg.distill_teacher, cfg, device, tcfg.distill_precision)
        pool = PairPool(tcfg.distill_reuse) if tcfg.distill_reuse > 1 else None
    adversary = None
    if tcfg.adv_weight > 0:
        tcfg.validate()
        adversary = Adversary(cfg.latent_channels, tcfg.adv_lr, device=device)
        ts = out / "dynamics.train.pt"
        if resume and step and ts.exists():  # the critic resumes with the network it was judging
            st = torch.load(ts, map_location=device, weights_only=True)
            if "adversary" in st:
                adversary.load_state_dict(st["adversary"])
    sampler = WindowSampler(store, cfg.context, seed * 1000 + rank + 7919 * step, recall, tcfg.memory_windows)
    fetch = Prefetcher(lambda: sampler.batch(tcfg.batch))
    log = ProgressLog("dynamics", step, total, out / "dynamics.log.jsonl" if rank == 0 else None,
                      enabled=progress and rank == 0, every=tcfg.log_every)
    meta_base = {"data": {k: store.info.get(k) for k in ("wad", "maps", "tick_rate", "resolution", "audio", "schema")}}
    if history is not None:
        meta_base["history"] = history
    net.train()
    t_start = time.time()
    s0 = min(tcfg.schedule_start, max(tcfg.steps - 1, 0))
    start, stopping = step, stop_requested()
    while step < total and not stopping:
        prog = min(max(step - s0, 0) / max(tcfg.steps - s0, 1), 1.0)
        if max_seconds is not None:  # a run bounded by wall time anneals by its deadline at the latest
            prog = max(prog, min((time.time() - t_start) / max_seconds, 1.0))
        warm = min(1.0, (step - s0 + 1) / tcfg.warmup) if step >= s0 else 1.0
        lr = tcfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * prog)))
        for g in opt.param_groups:
            g["lr"] = float(lr)
        batch = {k: v.to(device) for k, v in fetch.next().items()}
        loss, stats = dynamics_loss(net, batch, tcfg, names, device, teacher, pool, adversary)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        log.update(step, tcfg.batch * world * (cfg.context - 1), loss=loss.item(), lr=float(lr), **stats)
        out_of_time = max_seconds is not None and time.time() - t_start > max_seconds
        stopping = stop_requested()
        if ddp:  # every rank stops at the same step, whichever saw the deadline or the signal
            flag = torch.tensor([float(out_of_time), float(stopping)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time, stopping = bool(flag[0].item()), bool(flag[1].item())
        if out_of_time or stopping:
            total = step
        if rank == 0 and (step % tcfg.save_every == 0 or step == total):
            samples = seen0 + (step - step0) * tcfg.batch * world * (cfg.context - 1)
            save_component(out, "dynamics", model, cfg, meta={**meta_base, "train_steps": step, "predictions_seen": samples})
            save_train_state(out, "dynamics", step, opt,
                             {"adversary": adversary.state_dict()} if adversary is not None else None)
        if rank == 0 and on_eval is not None and tcfg.eval_every and step % tcfg.eval_every == 0:
            on_eval(step)
    fetch.close()
    log.close()
    if stopping:
        raise TrainingStopped(f"dynamics at step {step}" + (" (saved)" if step > start else ""))
    return {"steps": step}
