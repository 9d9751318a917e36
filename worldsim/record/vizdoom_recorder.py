"""`worldsim record vizdoom`: record real DOOM gameplay (frames, audio, pose, actions, depth)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from worldsim.actions import VIZDOOM_SCHEMA, Action
from worldsim.data.coverage import coverage_stats
from worldsim.data.episode import EpisodeWriter, next_episode_index
from worldsim.record.doom import DoomConfig, DoomGame
from worldsim.errors import WorldsimError
from worldsim.record.explorer import Explorer
from worldsim.record.loops import PATTERNS, SETTLE, closed, pattern

SILENCE_CHECK_STEPS = 300  # an explorer episode this long with sound on always makes some


class SilentAudioError(WorldsimError, RuntimeError):
    pass


@dataclass
class RecordConfig:
    """What to record. With `script`, the scripted actions replace the explorer (one episode per map)."""

    out: Path
    maps: Sequence[str] = ("MAP01",)
    steps: int = 3000
    episode_steps: int = 2000
    seed: int = 0
    doom: DoomConfig = field(default_factory=DoomConfig)
    script: list[Action] | None = None
    loops: bool = False          # explore, then one loop pattern per episode (worldsim.record.loops)
    progress: bool = True


def record_vizdoom(cfg: RecordConfig) -> dict:
    """Record `cfg.steps` steps over episodes that rotate through `cfg.maps`. Returns a summary dict."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.steps < 1 or cfg.episode_steps < 2:
        raise ValueError("steps must be ≥ 1 and episode_steps ≥ 2")
    doom = cfg.doom
    doom.map = cfg.maps[0]
    doom.seed = cfg.seed
    game = DoomGame(doom)
    audio_spec = ({"sample_rate": doom.sample_rate, "channels": 2 if doom.stereo else 1,
                   "samples_per_step": doom.samples_per_step} if doom.audio else None)
    ep_index = next_episode_index(out)
    total = 0
    summaries = []
    bar = tqdm(total=cfg.steps, unit="step", disable=not cfg.progress, desc="record vizdoom")
    t0 = time.perf_counter()
    io = ThreadPoolExecutor(max_workers=1)
    pending: list = []
    try:
        while total < cfg.steps:
            map_id = cfg.maps[len(summaries) % len(cfg.maps)]
            ep_seed = cfg.seed * 100_003 + len(summaries)
            game.new_episode(seed=ep_seed, map=map_id)
            script = cfg.script
            limit = min(cfg.episode_steps, cfg.steps - total)
            if script is not None:
                limit = min(limit, len(script))
            loop = None
            if cfg.loops:  # explore to somewhere, then leave and come back
                pre = int(np.random.default_rng(ep_seed).integers(60, 300)) + SETTLE
                name = PATTERNS[len(summaries) % len(PATTERNS)]
                loop = (pre, name, pattern(name))
                limit = pre + len(loop[2]) + 1
            explorer = Explorer(seed=ep_seed, frame_skip=doom.frame_skip)
            meta = {"source": "vizdoom", "wad": doom.wad, "map": map_id, "frame_skip": doom.frame_skip,
                    "tick_rate": doom.tick_rate, "seed": ep_seed, "skill": doom.skill,
                    "policy": "script" if script is not None else "explorer+loop" if loop else "explorer"}
            writer = EpisodeWriter(out / f"ep_{ep_index:06d}", VIZDOOM_SCHEMA, meta, (doom.resolution,) * 2, audio_spec)
            t_ep = time.perf_counter()
            terminated = False
            poses = []
            audible = 0
            try:
                for t in range(limit):
                    frame, audio, pose, depth = game.observe()
                    if audio is not None:
                        audible += bool(np.any(audio))
                    if loop is not None and loop[0] - SETTLE <= t < loop[0]:
                        action = VIZDOOM_SCHEMA.noop()  # come to rest before the pattern
                    elif loop is not None and loop[0] <= t < loop[0] + len(loop[2]):
                        action = loop[2][t - loop[0]]
                    else:
                        action = script[t] if script is not None else explorer.act(pose, game.full_depth)
                    game.act(action)
                    terminated = game.finished
                    writer.append(frame, action.buttons, action.axes, audio=audio, pose=pose,
                                  terminated=terminated, depth=depth, reward=game.last_reward)
                    poses.append(pose)
                    bar.update(1)
                    if terminated:
                        break
            except KeyboardInterrupt:  # Ctrl-C keeps what this episode recorded so far
                writer.close_partial({"ended_by": "interrupted"})
                raise
            n = len(writer)
            if doom.audio and script is None and n >= SILENCE_CHECK_STEPS and audible == 0:
                # OpenAL that loads but finds no usable output records zeros without an error
                raise SilentAudioError(f"ViZDoom recorded {n} steps of exact silence with audio on: OpenAL is not "
                                       "working here (install Debian's libopenal1 with its data package "
                                       "libopenal-data, keep +snd_efx 0), or pass --no-audio")
            rate = n / max(time.perf_counter() - t_ep, 1e-9)
            stats = coverage_stats(np.stack(poses), doom.tick_rate)
            stats["record_steps_per_s"] = rate
            stats["audible_fraction"] = audible / max(n, 1) if doom.audio else None
            # Write in the background while the next episode records (file I/O and crc32 release the GIL).
            extra = {"stats": stats, "ended_by": "death" if terminated else "length"}
            if loop is not None and n > loop[0] + len(loop[2]):
                t1, t2 = loop[0], loop[0] + len(loop[2])
                ok, d, dyaw = closed(np.stack(poses), t1, t2)
                extra["loops"] = [{"t1": t1, "t2": t2, "pattern": loop[1], "returned": ok, "dist": round(d, 1),
                                   "dyaw": round(dyaw, 1)}]
            pending.append(io.submit(writer.close, extra))
            total += n
            ep_index += 1
            summaries.append({"episode": writer.path.name, "map": map_id, "steps": n, **stats})
            bar.set_postfix(eps=len(summaries), cells_1k=f"{stats['coverage_cells_per_1k']:.0f}")
            if script is not None and len(summaries) >= len(cfg.maps):
                break
        for f in pending:
            f.result()
    finally:
        io.shutdown(wait=True)
        bar.close()
        game.close()
    elapsed = time.perf_counter() - t0
    summary = {
        "steps": total,
        "episodes": len(summaries),
        "record_steps_per_s": total / max(elapsed, 1e-9),
        "coverage_cells_per_1k": float(np.average([s["coverage_cells_per_1k"] for s in summaries],
                                                  weights=[s["steps"] for s in summaries])),
        "revisit_fraction": float(np.average([s["revisit_fraction"] for s in summaries],
                                             weights=[s["steps"] for s in summaries])),
        "config": {"maps": list(cfg.maps), "seed": cfg.seed, "episode_steps": cfg.episode_steps,
                   **{k: v for k, v in asdict(doom).items() if k not in ("map", "seed")}},
        "episodes_written": summaries,
    }
    (out / "recording.json").write_text(json.dumps(summary, indent=1))
    return summary
