"""Train the frame and audio codecs on random steps of recorded episodes.

Both codecs see single steps, so batches are drawn uniformly from all steps of all
training episodes (memory-mapped; a background thread assembles the next batch while the
current one trains). After training, per-channel latent statistics are measured on a
sample and stored in the codec so that the dynamics model sees standardised latents.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from worldsim.data.episode import Episode
from worldsim.errors import check_limits
from worldsim.model.audio_codec import AudioCodec, AudioCodecConfig
from worldsim.model.checkpoint import load_component, save_component
from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
from worldsim.train.loop import (Prefetcher, ProgressLog, TrainingStopped, autocast, resume_state, save_train_state,
                                 stop_requested)


@dataclass
class CodecTrainConfig:
    steps: int = 4000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    log_every: int = 50
    save_every: int = 500

    def validate(self) -> None:
        check_limits(self, "", {"steps": 0, "batch": 1, "lr": 1e-12, "warmup": 0, "log_every": 1, "save_every": 1})


class StepSampler:
    """Uniform random (episode, step) pairs over a list of episodes."""

    def __init__(self, episodes: Sequence[Episode], seed: int):
        self.episodes = list(episodes)
        self.lengths = np.array([len(e) for e in self.episodes])
        self.cum = np.cumsum(self.lengths)
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> list[tuple[Episode, int]]:
        flat = self.rng.integers(0, int(self.cum[-1]), n)
        idx = np.searchsorted(self.cum, flat, side="right")
        starts = self.cum - self.lengths
        return [(self.episodes[i], int(f - starts[i])) for i, f in zip(idx, flat)]


def _frames_batch(sampler: StepSampler, n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(e.frames[t]) for e, t in sampler.draw(n)]))


def _audio_batch(sampler: StepSampler, n: int) -> torch.Tensor:
    # oversample loud steps: most steps are quiet, and onsets are what the eval scores
    picks = []
    while len(picks) < n:
        for e, t in sampler.draw(n):
            a = np.asarray(e.audio[t])
            loud = np.abs(a).max() > 300
            if loud or sampler.rng.random() < 0.3:
                picks.append(a)
    return torch.from_numpy(np.stack(picks[:n]))


def train_codec(kind: str, episodes: Sequence[Episode], out: str | Path, cfg: CodecTrainConfig,
                model_cfg: FrameCodecConfig | AudioCodecConfig, seed: int = 0, resume: bool = False,
                max_steps: int | None = None, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Train one codec (``kind`` = ``frame_codec`` or ``audio_codec``) and save it under ``out``."""
    torch.manual_seed(seed)
    out = Path(out)
    if kind == "frame_codec":
        model: torch.nn.Module = FrameCodec(model_cfg).to(memory_format=torch.channels_last)  # type: ignore[arg-type]
        make: Callable[[StepSampler, int], torch.Tensor] = _frames_batch
    elif kind == "audio_codec":
        if any(e.audio is None for e in episodes):
            raise ValueError("audio codec: some training episodes have no audio")
        model = AudioCodec(model_cfg)  # type: ignore[arg-type]
        make = _audio_batch
    else:
        raise ValueError(f"unknown codec kind {kind!r}")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step = resume_state(out, kind, model, opt) if resume else 0
    sampler = StepSampler(episodes, seed + step)

    def save(step: int) -> None:
        set_latent_stats(model, make, sampler, device)
        save_component(out, kind, model, model_cfg, meta={"train_steps": step, "samples_seen": step * cfg.batch})
        save_train_state(out, kind, step, opt)

    return _fit(kind, model, opt, sampler, make, step, out, cfg, save, max_steps, progress, device)


# per codec kind: what a new decoder inherits from the trained codec (everything that shapes the
# encoder and latents), and the config fields that name the decoder (the first: its widths)
ENCODER_FIELDS = {"frame_codec": ("resolution", "channels", "latent_channels", "res_blocks"),
                  "audio_codec": ("samples", "channels", "strides", "widths", "latent_channels")}
DECODER_FIELDS = {"frame_codec": ("decoder_channels", "decoder_res_blocks"),
                  "audio_codec": ("decoder_widths",)}


def train_decoder(kind: str, episodes: Sequence[Episode], out: str | Path, cfg: CodecTrainConfig,
                  model_cfg: FrameCodecConfig | AudioCodecConfig, seed: int = 0, resume: bool = False,
                  max_steps: int | None = None, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Train a new decoder for the codec already in ``out`` (``kind`` = ``frame_codec``, whose
    ``decoder_channels`` name it, or ``audio_codec``, ``decoder_widths``), its encoder and latent
    statistics frozen: the latents, and any dynamics trained on them, stay valid. The old decoder
    is replaced when training ends (``<kind>.*``); progress lives in ``frame_decoder.*`` /
    ``audio_decoder.*`` until then, so an interrupted run resumes."""
    torch.manual_seed(seed)
    out = Path(out)
    stage = kind.replace("_codec", "_decoder")
    cls, cfg_cls, make = ((FrameCodec, FrameCodecConfig, _frames_batch) if kind == "frame_codec"
                          else (AudioCodec, AudioCodecConfig, _audio_batch))
    if not getattr(model_cfg, DECODER_FIELDS[kind][0]):
        raise ValueError(f"{stage} stage: set {kind}.{DECODER_FIELDS[kind][0]} to the new decoder's widths")
    if kind == "audio_codec" and any(e.audio is None for e in episodes):
        raise ValueError("audio decoder: some training episodes have no audio")
    old, old_meta = load_component(out, kind, cls, cfg_cls)
    model_cfg = dataclasses.replace(model_cfg, **{k: getattr(old.cfg, k) for k in ENCODER_FIELDS[kind]})
    model = cls(model_cfg)
    own = model.state_dict()
    # the encoder and statistics as they are; decoder layers whose name and shape agree as a warm start
    model.load_state_dict({k: v for k, v in old.state_dict().items() if k in own and v.shape == own[k].shape},
                          strict=False)
    model.to(device)
    if kind == "frame_codec":
        model.to(memory_format=torch.channels_last)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.decoder.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step = resume_state(out, stage, model, opt) if resume else 0
    sampler = StepSampler(episodes, seed + step)
    total = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    meta = {**old_meta, "decoder_train_steps": cfg.steps, "decoder_samples_seen": cfg.steps * cfg.batch}

    def save(step: int) -> None:
        save_component(out, stage, model, model_cfg, meta={"train_steps": step})
        save_train_state(out, stage, step, opt)
        if step >= cfg.steps:  # done: this is the codec now
            save_component(out, kind, model, model_cfg, meta=meta)

    return _fit(stage, model, opt, sampler, make, step, out, cfg, save, total - step, progress,
                device, model_train=model.decoder)


def _fit(name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, sampler: StepSampler,
         make: Callable[[StepSampler, int], torch.Tensor], step: int, out: Path, cfg: CodecTrainConfig,
         save: Callable[[int], None], max_steps: int | None, progress: bool, device: str,
         model_train: torch.nn.Module | None = None) -> dict[str, Any]:
    """The shared loop: cosine LR with warmup, bf16 autocast, clipped AdamW, periodic saves."""
    total = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    fetch = Prefetcher(lambda: make(sampler, cfg.batch))
    log = ProgressLog(name, step, total, out / f"{name}.log.jsonl", enabled=progress, every=cfg.log_every)
    model.eval()  # no dropout/norm layers: train() only matters for what is trained
    (model_train or model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    start = step
    while step < total and not stop_requested():
        lr = float(cfg.lr) * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * step / max(cfg.steps, 1)))
        for g in opt.param_groups:
            g["lr"] = float(lr)
        x = fetch.next().to(device)
        with autocast(device):
            loss, stats = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        log.update(step, cfg.batch, loss=loss.item(), **stats)
        if step % cfg.save_every == 0 or step == total or stop_requested():
            save(step)
    fetch.close()
    log.close()
    if stop_requested():
        raise TrainingStopped(f"{name} at step {step}" + (" (saved)" if step > start else ""))
    return {"steps": step}


@torch.no_grad()
def set_latent_stats(model: torch.nn.Module, make: Callable, sampler: StepSampler, device: str, n: int = 512) -> None:
    was = model.training
    model.eval()
    zs = []
    for _ in range(max(1, n // 64)):
        x = make(sampler, 64).to(device)
        with autocast(device):
            zs.append(model.encode_raw(model.to_float(x)).float())
    z = torch.cat(zs)  # (N, C, ...)
    dims = [0] + list(range(2, z.dim()))
    model.latent_mean.copy_(z.mean(dims))
    model.latent_std.copy_(z.std(dims).clamp_min(1e-3))
    model.train(was)


def load_codec(root: str | Path, kind: str) -> torch.nn.Module:
    if kind == "frame_codec":
        m, _ = load_component(root, kind, FrameCodec, FrameCodecConfig)
        return m.to(memory_format=torch.channels_last)
    m, _ = load_component(root, kind, AudioCodec, AudioCodecConfig)
    return m
