"""The world model: frame codec + audio codec + dynamics + sampler, loaded from a checkpoint.

``WorldModel`` is the inference object (training lives in :mod:`worldsim.train`). It steps
a *batch* of streams at once (:meth:`step_batch`, the runtime batches sessions through it)
and exposes the evaluation contract (:class:`worldsim.eval.interface.StreamingModel`)
through :meth:`open`, which returns a one-stream :class:`WorldStream`.

Streaming state is an explicit :class:`~worldsim.model.stream_state.StreamState`
(its own module): the rolling KV cache, the last frame latent, each row's tick counter, random
generator and scene memory, and the latest tick not yet written to the cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from worldsim.actions import ActionSchema
from worldsim.model.audio_codec import AudioCodec, AudioCodecConfig
from worldsim.model.checkpoint import CheckpointError, config_from_dict, load_component
from worldsim.device import pick_device  # noqa: F401  (re-exported: callers import it from here)
from worldsim.errors import read_json
from worldsim.model.action_inputs import action_vector, turn_features, turn_prior
from worldsim.model.dynamics import Dynamics, DynamicsConfig
from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
from worldsim.model.memory import MemoryConfig, PoseTracker, SceneMemory
from worldsim.model.stream_state import Pending, StreamState
from worldsim.model.reaim_net import LearnedReaim, ReaimNet, ReaimNetConfig
from worldsim.model.view_warp import LatentReaim, runs_to_mask
from worldsim.model.sampler import FlowSampler, FlowSamplerConfig
from worldsim.model import packed_linear
from worldsim.precision import autocast, compute_dtype, world_precision

DEFAULT_WORLD_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_world"


PRIOR_CODEC = "frame_codec_prior"  # optional: the frame codec the pixel turn prior decodes with
REAIM = "reaim"  # optional: the pixel turn prior learned in latent space (worldsim train --stage reaim)


class WorldModel:
    def __init__(self, frame_codec: FrameCodec, audio_codec: AudioCodec | None, dynamics: Dynamics,
                 world: dict[str, Any], sampler: FlowSamplerConfig | None = None, device: str = "cpu",
                 precision: str | None = None, prior_codec: FrameCodec | None = None, reaim_net: ReaimNet | None = None):
        self.device = device
        # weights in the compute dtype: under bf16 autocast, fp32 weights would be re-cast on every
        # call (no grad means no cast cache), which costs more than the small per-tick matmuls
        self.dtype = wd = compute_dtype(device, precision)
        self.frame_codec = frame_codec.to(device, wd).eval()
        self.audio_codec = audio_codec.to(device, wd).eval() if audio_codec is not None else None
        if self.audio_codec is not None:
            self.audio_codec.freeze_for_inference()
        self.dynamics = dynamics.to(device, wd).eval()
        self.precision = world_precision(device, precision)  # bf16, fp32 or int8 (worldsim.precision)
        if self.precision == "int8":
            packed_linear.use_int8(self.dynamics)
        self.world = world
        self.sampler = FlowSampler(sampler or config_from_dict(FlowSamplerConfig, world.get("sampler", {}), "world.json sampler"))
        self.schema = ActionSchema.from_dict(world["schema"])
        self.resolution: tuple[int, int] = tuple(world["resolution"])  # type: ignore[assignment]
        self.context_steps = dynamics.cfg.context - 1
        self.audio_spec = dict(world["audio"]) if (world.get("audio") and audio_codec is not None) else None
        self.tick_rate = float(world.get("tick_rate", 17.5))
        self.name = str(world.get("name", "worldsim"))
        self._names = (list(self.schema.buttons), list(self.schema.axes))
        self.autocast = autocast(device, wd)
        mem = dict(world.get("memory") or {})
        if "enabled" not in mem and not world.get("wad"):
            # the memory places views by dead reckoning with DOOM's player physics: in another game
            # (a Gymnasium env, an engine's recording) that pose is meaningless — a CartPole world
            # never "moves", so every tick looked like a return and old frames were blended in.
            # Off unless world.json's memory section turns it on (or World.load(memory=True))
            mem["enabled"] = False
        self.memory_cfg = config_from_dict(MemoryConfig, mem, "world.json memory")
        try:  # a bad overlay fails at load, not when the first session opens
            keep = runs_to_mask(self.memory_cfg.overlay, *self.resolution)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"world.json memory.overlay: {e}") from None
        # the pixel turn prior re-aims pictures: decoded by the codec the world keeps for it (a faithful
        # decoder, when the shown one is sharpened: its invented detail would feed back tick after tick,
        # README model card, session 25), else by the frame codec
        self.prior_codec = None if prior_codec is None else prior_codec.to(device, wd).eval()
        # a world may ship that prior learned in latent space (reaim.safetensors, model/reaim_net.py): no
        # picture decoded, warped and encoded a tick
        self.reaim_net = None if reaim_net is None else reaim_net.to(device, wd).eval()
        self._keep = torch.from_numpy(keep) if self.memory_cfg.overlay else None
        min_deg = self.dynamics.cfg.reaim_min_deg
        # the two ways a latent turns, built once: the learned one (when shipped) and through the picture;
        # the dynamics' pixel-space turn prior takes the first there is, the memory's recall both
        self._learned_reaim = None if self.reaim_net is None else LearnedReaim(self.reaim_net, min_deg)
        self._picture_reaim = self.pixel_reaim(min_deg=min_deg)
        if self.dynamics.cfg.prior_space == "pixel":
            self.dynamics.reaim = self._learned_reaim or self._picture_reaim

    def pixel_reaim(self, codec: FrameCodec | None = None, min_deg: float = 0.0) -> LatentReaim:
        """The pixel turn prior of this world's pictures (its field of view, its screen-fixed pixels kept),
        decoded by ``codec``, else by the codec the world keeps for it, else by its frame codec."""
        return LatentReaim(codec or self.prior_codec or self.frame_codec, self.memory_cfg.fov, self._keep, min_deg)

    def set_memory(self, on: bool) -> None:
        """Long-term scene memory for streams opened from now on (the eval's on/off switch)."""
        self.memory_cfg.enabled = bool(on)

    # ---- loading --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike = "default", device: str | None = None,
             sampler: FlowSamplerConfig | None = None, precision: str | None = None,
             learned_reaim: bool = True) -> "WorldModel":
        """``learned_reaim=False``: a world that ships a learned turn prior (``reaim.*``) turns
        with the pixel prior it imitates instead."""
        root = DEFAULT_WORLD_DIR if str(path) == "default" else Path(path)
        if not root.is_dir():
            raise CheckpointError(f"{root}: no such checkpoint directory")
        wf = root / "world.json"
        world = read_json(wf, lambda m: CheckpointError(f"{wf}: {m}"),
                          "missing (a world checkpoint needs world.json; is training finished?)")
        for k in ("schema", "resolution"):
            if k not in world:
                raise CheckpointError(f"{wf}: missing key {k!r}")
        fc, _ = load_component(root, "frame_codec", FrameCodec, FrameCodecConfig)
        ac = None
        if (root / "audio_codec.json").exists():
            ac, _ = load_component(root, "audio_codec", AudioCodec, AudioCodecConfig)
        dyn, _ = load_component(root, "dynamics", Dynamics, DynamicsConfig)
        if dyn.cfg.latent_channels != fc.cfg.latent_channels or dyn.cfg.latent_size != fc.cfg.latent_size:
            raise CheckpointError(f"{root}: dynamics expects {dyn.cfg.latent_channels}×{dyn.cfg.latent_size}² latents, "
                                  f"the frame codec makes {fc.cfg.latent_channels}×{fc.cfg.latent_size}²")
        if len(world["schema"].get("buttons", [])) != dyn.cfg.n_buttons:
            raise CheckpointError(f"{root}: world.json's action schema does not match the dynamics model")
        pc = None
        if (root / f"{PRIOR_CODEC}.json").exists():
            pc, _ = load_component(root, PRIOR_CODEC, FrameCodec, FrameCodecConfig)
            if pc.cfg.latent_channels != fc.cfg.latent_channels or pc.cfg.latent_size != fc.cfg.latent_size:
                raise CheckpointError(f"{root}: {PRIOR_CODEC} does not fit the frame codec's latents")
        rn = None
        if learned_reaim and (root / f"{REAIM}.json").exists():
            rn, _ = load_component(root, REAIM, ReaimNet, ReaimNetConfig)
            if rn.cfg.latent_channels != fc.cfg.latent_channels or rn.cfg.latent_size != fc.cfg.latent_size:
                raise CheckpointError(f"{root}: {REAIM} does not fit the frame codec's latents")
        m = cls(fc.to(memory_format=torch.channels_last), ac, dyn, world, sampler, pick_device(device), precision,
                None if pc is None else pc.to(memory_format=torch.channels_last), rn)
        m.path = root
        return m

    # ---- streaming --------------------------------------------------------------------
    def new_state(self, seeds: list[int]) -> StreamState:
        B = len(seeds)
        fc = self.frame_codec.cfg
        gens = []
        for s in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(s))
            gens.append(g)
        shape = (fc.latent_channels, fc.latent_size, fc.latent_size)
        mems = [SceneMemory(self.memory_cfg, shape, PoseTracker(self.memory_cfg, *self._names))
                if self.memory_cfg.enabled else None for _ in seeds]
        cache = self.dynamics.new_cache(B, device=self.device, dtype=self.dtype)  # slots in the compute dtype
        return StreamState(cache, torch.zeros(B, *shape, device=self.device),
                           torch.full((B,), -1, dtype=torch.long, device=self.device), gens, memories=mems)

    def _actions(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        b = torch.as_tensor(np.array(buttons, np.uint8), device=self.device)
        a = torch.as_tensor(np.array(axes, np.float32), device=self.device)
        return action_vector(b, a, self.dynamics.cfg), turn_features(b.cpu(), a.cpu(), *self._names).to(self.device)

    @torch.no_grad()
    def _commit(self, state: StreamState, z: torch.Tensor, za: torch.Tensor | None, act: torch.Tensor,
                prior: torch.Tensor, level: float) -> None:
        """Make (z, za) the latest tick: it becomes ``pending`` (committed to the cache by the
        next tick's first forward); a tick already pending is committed now, on its own."""
        self.flush(state)
        dyn = self.dynamics
        B = z.shape[0]
        state.pending = Pending(dyn.to_tokens(z)[:, None], None if za is None else za[:, None],
                                dyn.to_tokens(prior)[:, None], torch.full((B, 1), level, device=self.device),
                                act[:, None])
        state.time += 1
        state.prev.copy_(z)
        state.prev_frame = None  # step_batch sets it once the tick is decoded

    @torch.no_grad()
    def flush(self, state: StreamState) -> None:
        """Commit the pending tick with a forward of its own (priming, or before a read of the cache)."""
        p, state.pending = state.pending, None
        if p is None:
            return
        with self.autocast:
            self.dynamics.step(state.cache, p.frame, p.audio, p.prior, p.level, p.action, state.time, commit=True,
                               clean_outputs=False)

    @torch.no_grad()
    def prime(self, state: StreamState, frames: np.ndarray, audio: np.ndarray | None, buttons: np.ndarray,
              axes: np.ndarray, latents: tuple[np.ndarray, np.ndarray | None] | None = None) -> None:
        """Feed real context to every row: frames (B, c, H, W, 3), audio (B, c, S, C), actions (B, c-1, ·).
        ``latents``: the context already encoded — frame (B, c, C, h, w), audio (B, c, Da) or None
        (a shipped start's stored latents, see worldsim.runtime.starts); skips the encoders."""
        B, c = frames.shape[:2]
        wants_audio = self.audio_codec is not None and self.dynamics.audio_in is not None
        if latents is not None and (latents[1] is not None or not wants_audio or audio is None):
            z = torch.as_tensor(np.asarray(latents[0], np.float32), device=self.device)  # (B, c, C, h, w)
            za = None
            if wants_audio:
                za = (torch.zeros(B, c, self.dynamics.cfg.audio_dim, device=self.device) if latents[1] is None
                      else torch.as_tensor(np.asarray(latents[1], np.float32), device=self.device))  # (B, c, Da)
        else:
            z, za = self._encode_context(frames, audio, state)
        self._prime_latents(state, z, za, frames, buttons, axes)

    def _encode_context(self, frames: np.ndarray, audio: np.ndarray | None, state: StreamState):
        B, c = frames.shape[:2]
        fr = torch.as_tensor(np.ascontiguousarray(frames), device=self.device)
        with self.autocast:
            z = self.frame_codec.encode(fr.flatten(0, 1)).float().view(B, c, *state.prev.shape[1:])  # (B, c, C, h, w)
            za = None
            if self.audio_codec is not None and self.dynamics.audio_in is not None:
                if audio is None:
                    za = torch.zeros(B, c, self.dynamics.cfg.audio_dim, device=self.device)
                else:
                    au = torch.as_tensor(np.ascontiguousarray(audio), device=self.device)
                    za = self.audio_codec.encode(au.flatten(0, 1)).float().view(B, c, -1)  # (B, c, Da)
        return z, za

    def _prime_latents(self, state: StreamState, z: torch.Tensor, za: torch.Tensor | None, frames: np.ndarray,
                       buttons: np.ndarray, axes: np.ndarray) -> None:
        B, c = z.shape[:2]
        dyn = self.dynamics
        acts, feats = [torch.zeros(B, dyn.cfg.action_dim, device=self.device)], []
        for j in range(1, c):
            act, f = self._actions(buttons[:, j - 1], axes[:, j - 1])
            acts.append(act)
            feats.append(f)
        priors = [torch.zeros_like(z[:, :1])]
        if c > 1:  # every context tick's prior at once (one decode + encode with a pixel prior)
            pri = self._turn_prior(z[:, :-1].flatten(0, 1), torch.stack(feats, 1).flatten(0, 1))
            priors.append(pri.view(B, c - 1, *z.shape[2:]))  # (B, c-1, C, h, w)
        act, prior = torch.stack(acts, 1), torch.cat(priors, 1)  # (B, c, Dact), (B, c, C, h, w)
        self.flush(state)
        if c > 1:  # all but the last context tick go into the cache in one forward
            m = c - 1
            times = state.time[:, None] + 1 + torch.arange(m, device=self.device)  # (B, m)
            with self.autocast:
                mods = dyn.modulate(dyn.condition(torch.zeros(B, m, device=self.device), act[:, :m]))
                dyn.stream(state.cache, dyn.to_tokens(z[:, :m]), None if za is None else za[:, :m],
                           dyn.to_tokens(prior[:, :m]), mods, times, m, clean_outputs=False)
            state.time += m
        # the last context tick stays pending: the first step commits it
        self._commit(state, z[:, -1], None if za is None else za[:, -1], act[:, -1], prior[:, -1], 0.0)
        self.remember_context(state, frames, buttons, axes, z)

    @property
    def light_prior(self) -> bool:
        """Whether this world has a cheaper turn prior to fall back on under load: a pixel-space
        prior (decode, re-aim, encode every tick) can be replaced for a tick by sliding the
        previous latent, the prior the weights were first trained with (model card, session 25)."""
        return self.dynamics.cfg.prior_space == "pixel" and bool(self.dynamics.cfg.turn_weights)

    def _turn_prior(self, prev: torch.Tensor, feats: torch.Tensor, frames: torch.Tensor | None = None,
                    light: bool = False) -> torch.Tensor:
        """The turn prior of latents (N, C, h, w) under action features (N, 3); a pixel-space prior
        re-aims ``frames`` (their decoded pictures, when known) or decodes them, then encodes, in
        the codec's precision — unless ``light``: then the latent grid is slid."""
        if light:
            return turn_prior(prev, feats, self.dynamics.cfg, space="latent")
        if self.dynamics.cfg.prior_space == "pixel":
            reaim = self.dynamics.reaim
            with self.autocast:
                return turn_prior(prev, feats, self.dynamics.cfg,
                                  reaim if frames is None else (lambda z, yaw: reaim(z, yaw, frames)))
        return turn_prior(prev, feats, self.dynamics.cfg)

    def remember_context(self, state: StreamState, frames: np.ndarray, buttons: np.ndarray, axes: np.ndarray,
                         latents: np.ndarray | torch.Tensor | None = None) -> None:
        """The scene-memory half of :meth:`prime` (no dynamics): the context's real views (frames
        (B, c, H, W, 3), or their ``latents`` (B, c, C, h, w) when known: else encoded here),
        remembered with full confidence at the ticks ``prime`` gave them."""
        if all(m is None for m in state.memories):
            return
        if latents is None:
            latents, _ = self._encode_context(frames, None, state)
        c = latents.shape[1]
        for b, mem in enumerate(state.memories):
            if mem is not None:
                for j in range(c):
                    if j > 0:
                        mem.observe(buttons[b, j - 1], axes[b, j - 1])
                    mem.store(latents[b, j], int(state.time[b]) - (c - 1 - j), 1.0)

    @torch.no_grad()
    def reaim_memories(self, z: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """Remembered latents (N, C, h, w) re-aimed ``yaw`` (N,) degrees to the right, float32, as
        the world's turn prior turns a tick: by its learned prior (``reaim.*``) for turns up to
        ``memory.learned_deg`` (the turns it learned), else by the pixel prior (decode, warp, encode);
        turns under the dynamics' ``reaim_min_deg`` keep their latent."""
        near = (yaw.abs() <= self.memory_cfg.learned_deg if self._learned_reaim is not None
                else torch.zeros_like(yaw, dtype=torch.bool))  # (N,)
        out = torch.empty(z.shape, device=self.device)
        with self.autocast:
            if bool(near.any()):
                out[near] = self._learned_reaim(z[near], yaw[near]).float()
            if not bool(near.all()):
                out[~near] = self._picture_reaim(z[~near], yaw[~near]).float()
        return out

    @torch.no_grad()
    def step_batch(self, state: StreamState, buttons: np.ndarray, axes: np.ndarray, steps: int | None = None,
                   light_prior: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Advance every row one tick. buttons (B, NB), axes (B, NA) → frames (B, H, W, 3) uint8,
        audio (B, S, C) int16 or None. ``light_prior``: see :attr:`light_prior`."""
        dyn, cfg = self.dynamics, self.dynamics.cfg
        act, feats = self._actions(buttons, axes)
        prior = self._turn_prior(state.prev, feats, state.prev_frame, light=light_prior)
        prior_tok = dyn.to_tokens(prior)[:, None]  # (B, 1, P, Dt)
        B = prior.shape[0]
        noise = [torch.stack([torch.randn(cfg.frame_tokens, cfg.token_dim, generator=g, device=self.device)
                              for g in state.generators])[:, None]]  # (B, 1, P, Dt)
        if dyn.audio_in is not None:
            noise.append(torch.stack([torch.randn(cfg.audio_dim, generator=g, device=self.device)
                                      for g in state.generators])[:, None])  # (B, 1, Da)
        t_next = state.time + 1
        # long-term memory: where the viewer is now, and what it remembers of that place
        hits: list = [None] * B
        for b, m in enumerate(state.memories):
            if m is not None:
                m.observe(buttons[b], axes[b])
                hits[b] = m.recall(int(t_next[b]), self.context_steps + 1)
        zms: list = [None] * B  # the remembered views re-aimed to where each viewer now looks: one call for all rows
        rows = [b for b, h in enumerate(hits) if h is not None]
        if rows:
            zr = self.reaim_memories(torch.stack([hits[b].latent for b in rows]).to(self.device),
                                     torch.tensor([hits[b].yaw for b in rows], device=self.device))  # (R, C, h, w)
            for k, b in enumerate(rows):
                zms[b] = zr[k]
        mem_tok = None
        if dyn.memory_in is not None:  # a network trained to take the remembered view as input
            w = torch.tensor([[0.0 if h is None else h.weight] for h in hits], device=self.device)  # (B, 1)
            zm = torch.stack([torch.zeros_like(state.prev[0]) if x is None else x for x in zms])[:, None]  # (B, 1, C, h, w)
            mem_tok = dyn.memory_tokens(zm, w)  # (B, 1, P, Dt+1)

        # every condition of this tick (the pending commit + each sampling step) at once
        p = state.pending
        ts = self.sampler.timesteps(steps)[:-1]
        levels = ([p.level] if p is not None else []) + [torch.full((B, 1), t, device=self.device) for t in ts]
        acts = ([p.action] if p is not None else []) + [act[:, None]] * len(ts)
        with self.autocast:
            mods, head_mod = dyn.modulate(dyn.condition(torch.cat(levels, 1), torch.cat(acts, 1)))  # (B, K, 1, ·)
        calls = iter(range(len(ts)))
        off = 1 if p is not None else 0

        def pick(blocks: slice):
            return [m[:, blocks] for m in mods], head_mod[:, blocks]

        def velocity(xs, t):
            i = next(calls)
            au = xs[1] if len(xs) > 1 else None
            with self.autocast:
                if i == 0 and p is not None:  # first pass: commit the previous tick in the same forward
                    state.pending = None
                    mem2 = None  # the committed clean block takes no memory, as in training
                    if mem_tok is not None:
                        mem2 = torch.cat([dyn.memory_tokens(None, torch.zeros(B, 1, device=self.device)), mem_tok], 1)
                    vf, va = dyn.commit_and_step(
                        state.cache, torch.cat([p.frame, xs[0]], 1), None if au is None else torch.cat([p.audio, au], 1),
                        torch.cat([p.prior, prior_tok], 1), None, None, t_next, mods=pick(slice(0, 2)), memory=mem2)
                else:
                    vf, va = dyn.stream(state.cache, xs[0], au, prior_tok, pick(slice(off + i, off + i + 1)),
                                        t_next[:, None], False, mem_tok)
            return [vf] + ([va] if va is not None else [])

        out = self.sampler.sample(velocity, noise, steps)
        z = dyn.from_tokens(out[0][:, 0])  # (B, C, h, w)
        za = out[1][:, 0] if len(out) > 1 else None  # (B, Da)
        for b, m in enumerate(state.memories):  # back at a remembered place: bring it back
            if m is not None:
                z[b] = m.settle(z[b], zms[b], hits[b])
        lvl = self.sampler.cfg.context_level
        zc, zac = z, za
        if lvl > 0:  # commit the generated tick at the same noise level it is labelled with
            zc = (1 - lvl) * z + lvl * torch.stack([torch.randn(z.shape[1:], generator=g, device=self.device) for g in state.generators])
        self._commit(state, zc, zac, act, prior, lvl)  # prev = what was committed, as in training
        with self.autocast:
            shown = self.frame_codec.decode(z)  # (B, H, W, 3) uint8
            if lvl == 0 and self.dynamics.cfg.prior_space == "pixel" and self.prior_codec is None:
                state.prev_frame = shown  # the next tick's turn prior re-aims what was shown: no second decode
            frames = shown.cpu().numpy()
            audio = None
            if self.audio_codec is not None and za is not None:
                audio = self.audio_codec.decode(za.view(B, self.audio_codec.cfg.latent_channels, -1)).cpu().numpy()
        for b, m in enumerate(state.memories):  # what was shown is what a return will bring back
            if m is not None:
                m.remember(z[b], int(t_next[b]))
        return frames, audio

    # ---- the evaluation contract --------------------------------------------------------
    def open(self, context: Mapping[str, np.ndarray | None], seed: int = 0) -> "WorldStream":
        state = self.new_state([seed])
        fr = np.asarray(context["frames"])[None]
        au = context.get("audio")
        self.prime(state, fr, None if au is None else np.asarray(au)[None],
                   np.asarray(context["buttons"])[None], np.asarray(context["axes"])[None])
        return WorldStream(self, state)

    @torch.no_grad()
    def audio_roundtrip(self, audio: np.ndarray) -> np.ndarray | None:
        """Real sound (L, S, C) int16 through the audio codec (encode → decode), or None without
        one: the eval's ceiling for what generated latents can sound like."""
        if self.audio_codec is None:
            return None
        x = torch.as_tensor(np.array(audio, np.int16), device=self.device)  # a copy: episodes are read-only memmaps
        with self.autocast:
            return self.audio_codec.decode(self.audio_codec.encode(x)).cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {k: self.world.get(k) for k in ("name", "wad", "maps", "tick_rate", "resolution", "audio")}


@dataclass
class WorldStream:
    model: WorldModel
    state: StreamState
    ticks: int = field(default=0)

    def step(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        f, a = self.model.step_batch(self.state, np.asarray(buttons)[None], np.asarray(axes)[None])
        self.ticks += 1
        return f[0], None if a is None else a[0]

    def close(self) -> None:
        pass


def default_world_info() -> dict[str, Any] | None:
    """What the shipped default world was trained on (``worldsim info --json``), or None."""
    f = DEFAULT_WORLD_DIR / "world.json"
    if not f.exists():
        return None
    w = json.loads(f.read_text())
    return {"name": w.get("name"), "wad": w.get("wad"), "maps": w.get("maps"), "tick_rate": w.get("tick_rate"),
            "resolution": w.get("resolution"), "audio": w.get("audio"), "path": str(DEFAULT_WORLD_DIR),
            "training": w.get("training")}


def _eval_loader(spec: str, sampling_steps: int | None = None, device: str | None = None,
                 temperature: float | None = None, **_: Any) -> WorldModel:
    try:
        model = WorldModel.load(spec, device=device)
        # `worldsim eval --sampling-steps / --temperature`: the world's sampler, another step count or start noise
        changes = {k: v for k, v in (("steps", sampling_steps), ("temperature", temperature)) if v is not None}
        if changes:
            model.sampler = FlowSampler(replace(model.sampler.cfg, **changes))
        return model
    except CheckpointError as e:
        from worldsim.eval.registry import ModelUnavailable
        raise ModelUnavailable(str(e)) from None


def _register() -> None:
    from worldsim.eval.registry import register_model_loader
    register_model_loader("checkpoint", _eval_loader)

    def prior_loader(spec: str, **kw: Any) -> Any:  # `prior:WORLD`: its turn prior, decoded (prior_view.py)
        from worldsim.model.prior_view import load_prior_view
        return load_prior_view(spec, **kw)
    register_model_loader("prior", prior_loader)


_register()
