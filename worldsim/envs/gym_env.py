"""Gymnasium environments over a world model: rollouts in a learned simulator.

Observation: the generated frame ``(H, W, 3)`` uint8, or with ``audio=True`` a Dict
``{"frame": ..., "audio": (S, C) int16}``. Action: the world's action schema as
``Dict(buttons=MultiBinary(NB), axes=Box(NA))`` (see :mod:`worldsim.spaces`) — or, for a world
trained on a ``worldsim record gym`` recording, that env's own action space (``Discrete(2)``
for CartPole), so a policy written for the env steps its learned twin unchanged. A learned
simulator has no reward or terminal state of its own: reward is 0 unless a
``reward_fn(obs, action) -> float`` is given, and episodes end by truncation after
``max_episode_steps``. Seeding goes through ``reset(seed=...)``: the seed picks the start
context and seeds the sampler, so the same seed and actions give the same rollout.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

from worldsim.actions import Action
from worldsim.runtime.session import Session, World
from worldsim.spaces import from_env_action, schema_from_space, space_from_dict, space_from_schema

_WORLDS: dict[tuple[str, str | None, int | None], World] = {}


def _world(world: str | World, device: str | None, sampling_steps: int | None) -> World:
    """Worlds are shared between envs in one process (the weights are read-only)."""
    if isinstance(world, World):
        return world
    key = (str(world), device, sampling_steps)
    if key not in _WORLDS:
        _WORLDS[key] = World.load(str(world), device=device, sampling_steps=sampling_steps)
    return _WORLDS[key]


def _obs_space(w: World, audio: bool) -> spaces.Space:
    H, W = w.resolution
    frame = spaces.Box(0, 255, (H, W, 3), np.uint8)
    if not audio:
        return frame
    if w.audio_spec is None:
        raise ValueError(f"world {w.name!r} is silent: audio=True is not available")
    a = w.audio_spec
    return spaces.Dict({"frame": frame, "audio": spaces.Box(-32768, 32767, (a["samples_per_step"], a["channels"]), np.int16)})


ACTION_SPACES = ("auto", "schema")


def _action_space(w: World, which: str) -> spaces.Space:
    """``auto``: the recorded env's own space when the world has one, else the schema's Dict."""
    if which not in ACTION_SPACES:
        raise ValueError(f"action_space must be one of {list(ACTION_SPACES)}, got {which!r}")
    native = w.model.world.get("env_action_space")
    if which == "auto" and native:
        space = space_from_dict(native, f"world {w.name!r} world.json env_action_space")
        if schema_from_space(space) != w.schema:
            raise ValueError(f"world {w.name!r}: its env_action_space {native} does not match its action schema")
        return space
    return space_from_schema(w.schema, axis_bound=max(w.model.dynamics.cfg.axis_scale))


class WorldModelEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 17.5}

    def __init__(self, world: str | World = "default", audio: bool = False, max_episode_steps: int = 1000,
                 render_mode: str | None = None, device: str | None = None, sampling_steps: int | None = None,
                 reward_fn: Callable[[Any, Action], float] | None = None, action_space: str = "auto"):
        """``action_space``: ``"auto"`` (the recorded env's own space where the world keeps one,
        else the schema's Dict) or ``"schema"`` (always the Dict)."""
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.world = _world(world, device, sampling_steps)
        self.audio = audio
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        self.reward_fn = reward_fn
        self.metadata = dict(self.metadata, render_fps=self.world.tick_rate)
        self.observation_space = _obs_space(self.world, audio)
        self.action_space = _action_space(self.world, action_space)
        self.session: Session | None = None
        self._frame: np.ndarray | None = None
        self._t = 0

    def _obs(self, frame: np.ndarray, audio: np.ndarray | None) -> Any:
        self._frame = frame
        if not self.audio:
            return frame
        return {"frame": frame, "audio": audio if audio is not None else np.zeros(self.observation_space["audio"].shape, np.int16)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options["start"]``: an image or episode context to begin from (:meth:`World.open`);
        ``options["snapshot"]``: a saved session (a :class:`~worldsim.runtime.session.Snapshot` or a
        ``.wsnap`` path, :meth:`Session.save`) to continue from, drawing new noise from this reset's
        seed — rollouts from one saved situation (the first observation is its latest frame, the
        audio observation silence)."""
        super().reset(seed=seed)
        if self.session is not None:
            self.session.close()
            self.session = None
        s = int(self.np_random.integers(0, 2**31 - 1))
        options = options or {}
        if options.get("snapshot") is not None:
            if options.get("start") is not None:
                raise ValueError("reset options: give a 'start' or a 'snapshot', not both")
            self.session = self.world.restore(options["snapshot"], seed=s)
            self._t = 0
            frame = self.session.frame()
            return self._obs(frame, None), {"tick": self.session.tick}
        self.session = self.world.open(seed=s, start=options.get("start"))
        self._t = 0
        ctx = self.world.starts.context(options.get("start"), s)  # what the session was primed with
        ctx_audio = ctx.get("audio")
        return self._obs(np.array(ctx["frames"][-1]), None if ctx_audio is None else np.array(ctx_audio[-1])), {"tick": 0}

    def step(self, action):
        if self.session is None:
            raise RuntimeError("call reset() before step()")
        act = from_env_action(action, self.action_space, self.world.schema)
        chunk = self.session.step(act)
        self._t += 1
        obs = self._obs(chunk.frames[-1], chunk.audio)
        reward = float(self.reward_fn(obs, act)) if self.reward_fn else 0.0
        return obs, reward, False, self._t >= self.max_episode_steps, {"tick": chunk.tick}

    def render(self):
        return None if self._frame is None else self._frame.copy()

    def close(self):
        if self.session is not None:
            self.session.close()
            self.session = None


class WorldModelVectorEnv(VectorEnv):
    """``num_envs`` sessions stepped in one batched forward per call (autoreset: next step)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 17.5, "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, world: str | World = "default", audio: bool = False,
                 max_episode_steps: int = 1000, render_mode: str | None = None, device: str | None = None,
                 sampling_steps: int | None = None, action_space: str = "auto", **_: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be ≥ 1, got {num_envs}")
        self.envs = [WorldModelEnv(world, audio, max_episode_steps, render_mode, device, sampling_steps,
                                   action_space=action_space) for _ in range(num_envs)]
        self.world = self.envs[0].world
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = dict(self.metadata, render_fps=self.world.tick_rate)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, bool)

    def _stack(self, obs: list) -> Any:
        if isinstance(obs[0], dict):
            return {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        return np.stack(obs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """``options["start"]`` is one start for every env, or a list with one per env (e.g.
        contexts recorded from the real game, to compare a policy in both)."""
        seeds = seed if isinstance(seed, (list, tuple)) else [None if seed is None else seed + i for i in range(self.num_envs)]
        per_env = [options] * self.num_envs
        start = (options or {}).get("start")
        if isinstance(start, (list, tuple)):
            if len(start) != self.num_envs:
                raise ValueError(f"options['start'] has {len(start)} entries for {self.num_envs} envs")
            per_env = [dict(options, start=s) for s in start]
        out = [e.reset(seed=s, options=o) for e, s, o in zip(self.envs, seeds, per_env)]
        self._needs_reset[:] = False
        return self._stack([o for o, _ in out]), {"tick": np.zeros(self.num_envs, int)}

    def step(self, actions):
        obs, rew = [None] * self.num_envs, np.zeros(self.num_envs)
        term, trunc = np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        batch: dict[Session, Action] = {}
        index: dict[Session, int] = {}
        for i, e in enumerate(self.envs):
            if self._needs_reset[i]:
                obs[i], _ = e.reset()
                continue
            if isinstance(actions, dict):
                a = {k: np.asarray(v)[i] for k, v in actions.items()}
            else:
                a = actions[i]
            act = from_env_action(a, e.action_space, self.world.schema)
            batch[e.session] = act
            index[e.session] = i
        chunks = self.world.step_many(batch)
        for s, c in chunks.items():
            i = index[s]
            e = self.envs[i]
            e._t += 1
            obs[i] = e._obs(c.frames[-1], c.audio)
            trunc[i] = e._t >= e.max_episode_steps
        self._needs_reset = term | trunc
        return self._stack(obs), rew, term, trunc, {}

    def render(self):
        return tuple(e.render() for e in self.envs)

    def close_extras(self, **kwargs):
        for e in self.envs:
            e.close()
