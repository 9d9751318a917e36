"""Sharpen the frame decoder for the latents the dynamics actually generates.

A few-step flow lands near the *mean* of the possible next ticks, so the latents of a
free-running rollout are smoother than any real frame's, and the codec's decoder — trained on
real latents only — paints them smooth: sixteen ticks ahead the session-20 world's frames kept
~60 % of the real edge energy. Here the decoder (never the encoder: latents, dynamics and
stored starts stay valid) is fine-tuned on two kinds of input at once:

* **real latents** (encoded frames, with the codec's latent noise): L1 + image-gradient L1 to
  the frame, the codec's own loss, so that what was decoded well stays decoded well;
* **generated latents** (a bank drawn once by free-running the world from random starts of the
  training episodes under their recorded actions, :func:`generated_bank`): a pixel patch critic
  (hinge loss, spectral norm) that tells them from real frames, plus *anchors* to the decoder it
  started from — the 4×4-pooled picture, and the 2×2-pooled colour — so that the critic can add
  detail but cannot move what the dynamics put where (walls, the weapon, what an action changed),
  and adds it as brightness, as the game's textures are, not as coloured speckle; the first few
  generated ticks, still close to their recorded frames, are also pulled toward those frames.

The trade is the perception/distortion one (adversarial.py's, in pixels instead of latents):
detail the model cannot place exactly costs PSNR; `worldsim eval` decides whether it ships
(README model card, session 24).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.data.episode import Episode
from worldsim.errors import check_limits
from worldsim.eval.interface import build_context
from worldsim.model.frame_codec import pixel_l1_terms
from worldsim.train.codec_trainer import StepSampler
from worldsim.train.loop import Prefetcher, ProgressLog, TrainingStopped, autocast, stop_requested


@dataclass
class DecoderAdvConfig:
    steps: int = 0             # 0: no such stage (a config turns it on)
    batch: int = 32            # real frames per step; as many generated latents
    lr: float = 2e-4           # the decoder's (a fine-tune of a trained decoder)
    critic_lr: float = 2e-4
    adv_weight: float = 0.05   # the critic's hinge term against the L1 terms (pixels in [-1, 1])
    anchor_weight: float = 1.0  # L1 between 4×4-pooled pictures of the new and the frozen decoder
    anchor_pool: int = 4
    chroma_weight: float = 0.0  # L1 between the 2×2-pooled colour (RGB minus luma) of the new and the frozen
                                # decoder: detail comes as luma, as the game's textures do, not as coloured speckle
    near_weight: float = 0.0   # reconstruction of the real frame for the first generated ticks (halving per tick)
    near_horizon: int = 4
    temporal: bool = False     # the critic judges (previous, current) frame pairs: detail that flickers from tick
                               # to tick, unlike the game's textures that move with the view, is told apart
    bank_starts: int = 1024    # free-running starts drawn for the bank of generated latents
    bank_horizon: int = 32     # ticks each start runs (every tick's latent is kept)
    bank_batch: int = 16       # starts run side by side
    warmup: int = 50
    log_every: int = 25
    save_every: int = 250

    def validate(self) -> None:
        check_limits(self, "frame_decoder_adv_train", {
            "steps": 0, "batch": 1, "lr": 1e-12, "critic_lr": 1e-12, "adv_weight": 0, "anchor_weight": 0,
            "anchor_pool": 1, "chroma_weight": 0, "near_weight": 0, "near_horizon": 1, "bank_starts": 1,
            "bank_horizon": 1, "bank_batch": 1, "warmup": 0, "log_every": 1, "save_every": 1})


class PixelCritic(nn.Module):
    """uint8-range frames as [-1, 1] (N, 3·frames, H, W) → patch logits (N, 1, H/8, W/8); with
    ``frames`` 2 it sees a frame beside the one before it."""

    def __init__(self, width: int = 48, frames: int = 1):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = width
        self.net = nn.Sequential(
            sn(nn.Conv2d(3 * frames, w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * w, 1, 3, padding=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (N, 1, H, W)


def _chroma(x: torch.Tensor) -> torch.Tensor:
    return x - _luma(x)  # (N, 3, H, W): the colour of each pixel without its brightness


def edge_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean |finite-difference gradient| of the luma of [-1, 1] images (N, 3, H, W) (the eval's
    sharpness measure, up to scale): a training statistic, never a loss."""
    y = _luma(x)[:, 0].float()  # (N, H, W)
    return (y[:, :, 1:] - y[:, :, :-1]).abs().mean() + (y[:, 1:] - y[:, :-1]).abs().mean()


@torch.no_grad()
def previous_in_bank(where: np.ndarray) -> np.ndarray:
    """For each bank entry (``where`` as :func:`generated_bank` returns it) the index of the tick
    its start generated just before it, -1 for a start's first tick (whose previous frame is the
    real context's last)."""
    prev = np.full(len(where), -1, np.int64)
    i = 0
    while i < len(where):  # a group: n starts' first ticks, then their second ticks, … (generated_bank's order)
        n = int(np.argmax(where[i:, 2] != 1)) if (where[i:, 2] != 1).any() else len(where) - i
        h = 1
        while i + (h + 1) * n <= len(where) and (where[i + h * n:i + (h + 1) * n, 2] == h + 1).all():
            h += 1
        rows = np.arange(i + n, i + h * n)
        prev[rows] = rows - n
        i += h * n
    return prev


def generated_bank(world: Any, episodes: Sequence[Episode], starts: int, horizon: int, batch: int, seed: int,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Free-run ``world`` (a :class:`~worldsim.model.world_model.WorldModel`) from ``starts``
    random points of ``episodes`` for ``horizon`` ticks each under the recorded actions; returns
    every generated tick's standardised frame latent, (starts·horizon, C, h, w) float16, and where
    it stands in the recordings, (starts·horizon, 3) int32: episode index, the step of the real
    frame it stands for, ticks since the start (1 = the first generated tick)."""
    c = world.context_steps
    long = [i for i, e in enumerate(episodes) if len(e) >= c + horizon + 1]
    if not long:
        raise ValueError(f"no training episode is long enough for context {c} + {horizon} ticks")
    rng = np.random.default_rng(seed)
    out, where, t0, done = [], [], time.perf_counter(), 0
    while done < starts:
        n = min(batch, starts - done)
        picks = [(int(i), int(rng.integers(c - 1, len(episodes[i]) - horizon - 1)))
                 for i in (long[k] for k in rng.integers(0, len(long), n))]
        eps = [episodes[i] for i, _ in picks]
        ctx = [build_context(e.frames, e.buttons, e.axes, e.audio, s, c) for e, (_, s) in zip(eps, picks)]
        state = world.new_state([int(x) for x in rng.integers(0, 2**31, n)])
        au = None if any(x["audio"] is None for x in ctx) else np.stack([x["audio"] for x in ctx])
        world.prime(state, np.stack([x["frames"] for x in ctx]), au,
                    np.stack([x["buttons"] for x in ctx]), np.stack([x["axes"] for x in ctx]))
        for j in range(horizon):
            world.step_batch(state, np.stack([np.asarray(e.buttons[s + j]) for e, (_, s) in zip(eps, picks)]),
                             np.stack([np.asarray(e.axes[s + j]) for e, (_, s) in zip(eps, picks)]))
            out.append(state.prev.float().cpu().numpy().astype(np.float16))  # (n, C, h, w)
            where.append(np.array([(i, s + j + 1, j + 1) for i, s in picks], np.int32))  # (n, 3)
        done += n
        if progress:
            el = time.perf_counter() - t0
            print(f"bank: {done}/{starts} starts ({done * horizon} latents, {el:.0f} s)", flush=True)
    return np.concatenate(out), np.concatenate(where)


def train_decoder_adv(codec: nn.Module, frozen: nn.Module, bank: tuple[np.ndarray, np.ndarray],
                      episodes: Sequence[Episode], out: str | Path, cfg: DecoderAdvConfig, seed: int = 0,
                      start: int = 0, max_steps: int | None = None, progress: bool = True, device: str = "cpu",
                      save: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``codec.decoder`` (a FrameCodec, changed in place) on real frames and on the bank
    of generated latents, anchored to ``frozen`` (the decoder it started from), from step ``start``
    to ``cfg.steps``; ``save(step)`` every ``save_every`` steps, at the end and when stopped."""
    torch.manual_seed(seed + start)
    out = Path(out)
    codec.to(device).eval()
    frozen = frozen.to(device).eval()
    for p in list(codec.encoder.parameters()) + list(frozen.parameters()):
        p.requires_grad_(False)
    critic = PixelCritic(frames=2 if cfg.temporal else 1).to(device)
    opt = torch.optim.AdamW(codec.decoder.parameters(), lr=cfg.lr, betas=(0.5, 0.99), weight_decay=0.0)
    copt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=(0.5, 0.99), weight_decay=0.0)
    sampler = StepSampler(episodes, seed + start)
    rng = np.random.default_rng(seed + 1 + start)
    m, s = codec._norm()
    total = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)

    latents, where = bank
    # the first generated ticks stand close to their real frames: a reconstruction term toward them,
    # halving per tick, up to near_horizon (beyond, the rollout has left the recording)
    near_w = np.where(where[:, 2] <= cfg.near_horizon, cfg.near_weight * 0.5 ** (where[:, 2] - 1.0), 0.0)
    prev = previous_in_bank(where) if cfg.temporal else None

    def frames(pairs: Any) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(e.frames[t]) for e, t in pairs]))  # (B, H, W, 3) uint8

    def draw() -> tuple[torch.Tensor, ...]:
        pairs = sampler.draw(cfg.batch)
        real = frames(pairs)
        pick = rng.integers(0, len(latents), cfg.batch)
        gen = torch.from_numpy(latents[pick].astype(np.float32))  # (B, C, h, w)
        target = (frames((episodes[i], t) for i, t, _ in where[pick])
                  if cfg.near_weight > 0 else real)  # read only when the near term uses them
        extra: tuple[torch.Tensor, ...] = ()
        if prev is not None:  # the tick before each: real frames for the real, generated (or the context's) for the bank's
            before = prev[pick]
            extra = (frames((e, max(t - 1, 0)) for e, t in pairs),
                     torch.from_numpy(latents[np.maximum(before, 0)].astype(np.float32)),
                     frames((episodes[i], t - 1) for i, t, _ in where[pick]),
                     torch.from_numpy(before >= 0))
        return (real, gen, target, torch.from_numpy(near_w[pick].astype(np.float32))) + extra

    fetch = Prefetcher(draw)
    log = ProgressLog("frame_decoder_adv", start, total, out / "frame_decoder_adv.log.jsonl", enabled=progress,
                      every=cfg.log_every)
    codec.decoder.train()
    stats: dict[str, float] = {}
    step = start
    while step < total and not stop_requested():
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        for g in opt.param_groups:
            g["lr"] = lr
        real, gen, target, wn, *extra = (t.to(device) for t in fetch.next())
        x = codec.to_float(real)  # (B, 3, H, W) in [-1, 1]
        raw_gen = gen * s + m  # (B, C, h, w) unstandardised, as decode_raw takes
        x_in, before = x, None
        if extra:  # the critic's inputs become (previous, current) pairs: (B, 6, H, W)
            real_prev, gen_prev, ctx_prev, has_prev = extra
            x_in = torch.cat([codec.to_float(real_prev), x], 1)
            with torch.no_grad(), autocast(device):  # the previous tick as the decoder paints it now
                yp = codec.decode_raw(gen_prev * s + m).float()
            before = torch.where(has_prev[:, None, None, None], yp, codec.to_float(ctx_prev))
        with torch.no_grad(), autocast(device):
            z = codec.encode_raw(x)
            z = z + codec.cfg.latent_noise * z.float().std() * torch.randn_like(z.float())
            y0 = frozen(raw_gen.contiguous(memory_format=torch.channels_last)).float()  # (B, 3, H, W)
            anchor = F.avg_pool2d(y0, cfg.anchor_pool)
        with autocast(device):
            y = codec.decode_raw(z.to(x.dtype)).float()
            yg = codec.decode_raw(raw_gen).float()
        # the critic's step: real frames against the decoder's pictures of generated latents
        with autocast(device):
            fake = yg.detach() if before is None else torch.cat([before, yg.detach()], 1)
            dr, df = critic(x_in), critic(fake)
        closs = F.relu(1 - dr.float()).mean() + F.relu(1 + df.float()).mean()
        copt.zero_grad(set_to_none=True)
        closs.backward()
        copt.step()
        # the decoder's step
        rec = sum(t.mean() for t in pixel_l1_terms(y, x))
        anc = (F.avg_pool2d(yg, cfg.anchor_pool) - anchor).abs().mean()
        chroma = torch.zeros(())
        if cfg.chroma_weight > 0:
            chroma = (F.avg_pool2d(_chroma(yg), 2) - F.avg_pool2d(_chroma(y0), 2)).abs().mean()
        near = torch.zeros(())
        if cfg.near_weight > 0:
            near = (wn * sum(pixel_l1_terms(yg, codec.to_float(target)))).mean()  # (B,) weighted
        for p in critic.parameters():
            p.requires_grad_(False)
        critic.eval()
        with autocast(device):
            adv = -critic(yg if before is None else torch.cat([before, yg], 1)).float().mean()
        critic.train()
        for p in critic.parameters():
            p.requires_grad_(True)
        loss = rec + cfg.anchor_weight * anc + cfg.chroma_weight * chroma + cfg.adv_weight * adv + near
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.decoder.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():  # edge energy of the generated pictures over the real batch's, new and frozen
            ex = edge_energy(x)
            stats = {"rec": rec.item(), "anchor": anc.item(), "chroma": chroma.item(), "near": near.item(),
                     "adv": adv.item(), "critic": closs.item(),
                     "edge_gen": (edge_energy(yg) / ex).item(), "edge_frozen": (edge_energy(y0) / ex).item()}
        log.update(step, cfg.batch, loss=loss.item(), **stats)
        if save is not None and (step % cfg.save_every == 0 or step == total or stop_requested()):
            save(step)
    fetch.close()
    log.close()
    codec.eval()
    if stop_requested():
        raise TrainingStopped(f"frame_decoder_adv at step {step}" + (" (saved)" if step > start else ""))
    return {"steps": step, **stats}


STAGE_DIR = "decoder_adv"  # in the run: the frame codec the stage starts from, and the bank


def base_codec(run: str | Path) -> Any:
    """The frame codec this stage started from in ``run`` (a FrameCodec, eval mode), or None when the
    stage never ran there: the faithful decoder a pixel turn prior decodes with."""
    from worldsim.model.checkpoint import load_component
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig

    d = Path(run) / STAGE_DIR
    return load_component(d, "frame_codec", FrameCodec, FrameCodecConfig)[0].eval() if (d / "frame_codec.json").exists() else None


def run_stage(out: str | Path, episodes: Sequence[Episode], cfg: DecoderAdvConfig, seed: int = 0,
              resume: bool = False, max_steps: int | None = None, progress: bool = True,
              device: str = "cpu") -> dict[str, Any]:
    """``worldsim train``'s ``frame_decoder_adv`` stage on the run directory ``out`` (which must hold
    a trained world: codecs, dynamics, world.json). The run's frame codec before the stage is kept
    in ``decoder_adv/frame_codec.*``; the stage always starts from and anchors to it, so running it
    again (other settings, newer dynamics) never fine-tunes an already sharpened decoder. The bank of
    generated latents is cached in ``decoder_adv/bank.npy`` for the dynamics it was drawn with.
    ``--resume`` continues a stage that was stopped (its decoder is saved; the critic restarts)."""
    from worldsim.model.checkpoint import load_component, read_component_json, save_component
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
    from worldsim.model.world_model import WorldModel

    out = Path(out)
    for f in ("frame_codec.json", "dynamics.json", "world.json"):
        if not (out / f).exists():
            raise ValueError(f"{out}: frame_decoder_adv needs a trained world ({f} is missing): "
                             "run the codec and dynamics stages first")
    base_dir = out / STAGE_DIR
    if not (base_dir / "frame_codec.json").exists():
        base_dir.mkdir(exist_ok=True)
        for ext in (".safetensors", ".json"):  # the JSON last: it marks a complete copy
            shutil.copyfile(out / f"frame_codec{ext}", base_dir / f"frame_codec{ext}")
    done = int((read_component_json(out, "frame_codec").get("meta") or {}).get("decoder_adv", {}).get("steps", 0))
    if done >= cfg.steps:
        return {"steps": done, "skipped": "already trained"}
    start = done if resume else 0
    dyn_steps = int((read_component_json(out, "dynamics").get("meta") or {}).get("train_steps", 0))
    bank_f, where_f, key_f = base_dir / "bank.npy", base_dir / "bank_where.npy", base_dir / "bank.json"
    # the bank indexes the episodes (its real frames): drawn again if they, the dynamics or the sampler changed
    key = {"dynamics_train_steps": dyn_steps, "starts": cfg.bank_starts, "horizon": cfg.bank_horizon, "seed": seed,
           "sampler": json.loads((out / "world.json").read_text()).get("sampler"),
           "episodes": [f"{Path(e.path).name}:{len(e)}" for e in episodes]}
    if bank_f.exists() and where_f.exists() and key_f.exists() and json.loads(key_f.read_text()) == key:
        bank = np.load(bank_f), np.load(where_f)
    else:
        if done:  # draw with the base decoder (the scene memory re-encodes what it showed)
            for ext in (".safetensors", ".json"):
                shutil.copyfile(base_dir / f"frame_codec{ext}", out / f"frame_codec{ext}")
            done = start = 0
        world = WorldModel.load(out, device=device)
        bank = generated_bank(world, episodes, cfg.bank_starts, cfg.bank_horizon, cfg.bank_batch, seed, progress)
        del world
        np.save(bank_f, bank[0])
        np.save(where_f, bank[1])
        key_f.write_text(json.dumps(key))  # after the bank: a bank without its key is drawn again
    base, meta = load_component(base_dir, "frame_codec", FrameCodec, FrameCodecConfig)
    if (read_component_json(out, "dynamics").get("config") or {}).get("prior_space") == "pixel":
        # the pixel turn prior keeps decoding with the faithful decoder (WorldModel: frame_codec_prior)
        from worldsim.model.world_model import PRIOR_CODEC
        save_component(out, PRIOR_CODEC, base, base.cfg, meta={**meta, "note": "the frame codec before frame_decoder_adv: "
                                                                 "the pixel turn prior decodes with it"})
    codec, _ = load_component(out if start else base_dir, "frame_codec", FrameCodec, FrameCodecConfig)
    codec = codec.to(memory_format=torch.channels_last)

    def save(step: int) -> None:
        save_component(out, "frame_codec", codec, codec.cfg, meta={
            **meta, "decoder_adv": {"steps": step, "of": cfg.steps, "adv_weight": cfg.adv_weight,
                                    "anchor_weight": cfg.anchor_weight, "chroma_weight": cfg.chroma_weight,
                                    "near_weight": cfg.near_weight, "temporal": cfg.temporal, "bank_latents": int(len(bank[0])),
                                    "dynamics_train_steps": dyn_steps}})

    return train_decoder_adv(codec, base.decoder, bank, episodes, out, cfg, seed, start, max_steps, progress,
                             device, save)
