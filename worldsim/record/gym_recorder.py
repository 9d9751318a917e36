"""`worldsim record gym`: record any Gymnasium env with ``render_mode="rgb_array"``."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from tqdm import tqdm

from worldsim.actions import Action
from worldsim.data.episode import EpisodeWriter, next_episode_index
from worldsim.spaces import from_env_action, schema_from_space, space_to_dict, to_env_action

Policy = Callable[[Any, Any], Any]  # (observation, action_space) -> env action


@dataclass
class GymRecordConfig:
    env_id: str
    out: Path
    steps: int = 1000
    seed: int = 0
    resolution: int = 64
    policy: str = "random"  # "random" or "module:function" taking (obs, action_space)
    max_episode_steps: int | None = None
    script: list[Action] | None = None
    progress: bool = True


def load_policy(spec: str) -> Policy | None:
    """'random' → None (sample the action space); 'pkg.mod:func' → that function."""
    if spec == "random":
        return None
    if ":" not in spec:
        raise ValueError(f"policy must be 'random' or 'module:function', got {spec!r}")
    mod, fn = spec.split(":", 1)
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load policy {spec!r}: {e}") from None
    if not callable(f):
        raise ValueError(f"policy {spec!r} is not callable")
    return f


def _episode(env: Any, obs: Any, cfg: GymRecordConfig, policy: Policy | None, schema: Any, writer: EpisodeWriter,
             bar: tqdm, total: int) -> str:
    """Record one episode into ``writer`` (from the observation ``obs`` of its reset) until it
    ends or the run has its ``cfg.steps``; returns how it ended."""
    r = cfg.resolution
    while total + len(writer) < cfg.steps:
        frame = env.render()
        if frame is None:
            raise ValueError(f"{cfg.env_id} rendered nothing: it needs render_mode='rgb_array' support")
        frame = cv2.resize(np.asarray(frame, np.uint8)[..., :3], (r, r), interpolation=cv2.INTER_AREA)
        t = len(writer)
        if cfg.script is not None:
            if t >= len(cfg.script):
                break
            value = to_env_action(cfg.script[t], env.action_space, schema)
            # store what the env received ("no key" on a Discrete space is its first action)
            action = from_env_action(value, env.action_space, schema)
        else:
            value = env.action_space.sample() if policy is None else policy(obs, env.action_space)
            action = from_env_action(value, env.action_space, schema)
        obs, reward, terminated, truncated, _ = env.step(value)
        writer.append(frame, action.buttons, action.axes, reward=float(reward), terminated=bool(terminated))
        bar.update(1)
        if terminated or truncated:
            return "terminated" if terminated else "truncated"
    return "length"


def record_gym(cfg: GymRecordConfig) -> dict:
    import gymnasium as gym

    try:
        env = gym.make(cfg.env_id, render_mode="rgb_array", **({"max_episode_steps": cfg.max_episode_steps}
                                                                 if cfg.max_episode_steps else {}))
    except gym.error.Error as e:
        raise ValueError(f"cannot make env {cfg.env_id!r}: {e}") from None
    policy = load_policy(cfg.policy)
    schema = schema_from_space(env.action_space)
    env.action_space.seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fps = float(env.metadata.get("render_fps") or 30)
    total, ep, summaries = 0, 0, []
    first = next_episode_index(out)
    bar = tqdm(total=cfg.steps, unit="step", disable=not cfg.progress, desc=f"record {cfg.env_id}")
    t0 = time.perf_counter()
    try:
        while total < cfg.steps:
            obs, _ = env.reset(seed=cfg.seed + ep)
            meta = {"source": "gym", "env_id": cfg.env_id, "map": cfg.env_id, "tick_rate": fps, "frame_skip": 1,
                    "seed": cfg.seed + ep, "policy": cfg.policy if cfg.script is None else "script",
                    "env_action_space": space_to_dict(env.action_space)}
            writer = EpisodeWriter(out / f"ep_{first + ep:06d}", schema, meta, (cfg.resolution,) * 2, None)
            try:
                ended = _episode(env, obs, cfg, policy, schema, writer, bar, total)
            except KeyboardInterrupt:  # Ctrl-C keeps what this episode recorded so far
                writer.close_partial({"ended_by": "interrupted"})
                raise
            total += len(writer)
            if len(writer) == 0:
                break
            writer.close({"ended_by": ended})
            summaries.append({"episode": writer.path.name, "steps": len(writer), "ended_by": ended})
            ep += 1
            if cfg.script is not None:
                break
    finally:
        bar.close()
        env.close()
    summary = {"steps": total, "episodes": len(summaries), "record_steps_per_s": total / max(time.perf_counter() - t0, 1e-9),
               "env_id": cfg.env_id, "action_schema": schema.to_dict(), "episodes_written": summaries}
    (out / "recording.json").write_text(json.dumps(summary, indent=1))
    return summary
