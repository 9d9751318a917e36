"""A PettingZoo ParallelEnv: a group of NPCs, each its own session of one world, all
stepped together in one batched forward per tick (cutscenes, crowds, multi-agent rollouts).
Observations and actions per agent are as in :class:`worldsim.envs.gym_env.WorldModelEnv`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from worldsim.envs.gym_env import _action_space, _obs_space, _world
from worldsim.runtime.session import Session, World
from worldsim.spaces import from_env_action


class WorldModelParallelEnv(ParallelEnv):
    metadata = {"render_modes": ["rgb_array"], "name": "worldsim_npcs_v0", "render_fps": 17.5}

    def __init__(self, num_agents: int = 2, world: str | World = "default", audio: bool = False,
                 max_cycles: int = 200, render_mode: str | None = None, device: str | None = None,
                 sampling_steps: int | None = None, action_space: str = "auto"):
        if num_agents < 1:
            raise ValueError(f"num_agents must be ≥ 1, got {num_agents}")
        self.world = _world(world, device, sampling_steps)
        self._action = _action_space(self.world, action_space)  # shared by every agent (read-only)
        self.audio = audio
        self.max_cycles = max_cycles
        self.render_mode = render_mode
        self.possible_agents = [f"npc_{i}" for i in range(num_agents)]
        self.agents: list[str] = []
        self.sessions: dict[str, Session] = {}
        self._frames: dict[str, np.ndarray] = {}
        self._t = 0
        self._rng = np.random.default_rng()

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str):
        return _obs_space(self.world, self.audio)

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str):
        return self._action

    def _obs(self, agent: str, frame: np.ndarray, audio: np.ndarray | None) -> Any:
        self._frames[agent] = frame
        if not self.audio:
            return frame
        return {"frame": frame, "audio": audio if audio is not None else np.zeros(self.observation_space(agent)["audio"].shape, np.int16)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        for s in self.sessions.values():
            s.close()
        self.agents = list(self.possible_agents)
        self.sessions, obs, infos = {}, {}, {}
        starts = (options or {}).get("starts", {})
        for a in self.agents:
            sd = int(self._rng.integers(0, 2**31 - 1))
            self.sessions[a] = self.world.open(seed=sd, start=starts.get(a))
            ctx = self.world.starts.context(starts.get(a), sd)
            au = ctx.get("audio")
            obs[a] = self._obs(a, np.array(ctx["frames"][-1]), None if au is None else np.array(au[-1]))
            infos[a] = {"tick": 0}
        self._t = 0
        return obs, infos

    def step(self, actions: dict[str, Any]):
        batch = {}
        for a in self.agents:
            act = actions.get(a)
            batch[self.sessions[a]] = None if act is None else from_env_action(act, self.action_space(a), self.world.schema)
        chunks = self.world.step_many(batch)
        self._t += 1
        done = self._t >= self.max_cycles
        obs, rew, term, trunc, infos = {}, {}, {}, {}, {}
        for a in self.agents:
            c = chunks[self.sessions[a]]
            obs[a] = self._obs(a, c.frames[-1], c.audio)
            rew[a], term[a], trunc[a], infos[a] = 0.0, False, done, {"tick": c.tick}
        if done:
            for s in self.sessions.values():
                s.close()
            self.agents = []
        return obs, rew, term, trunc, infos

    def render(self):
        return {a: f.copy() for a, f in self._frames.items()}

    def close(self):
        for s in self.sessions.values():
            s.close()
