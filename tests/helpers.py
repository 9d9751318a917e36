"""Small synthetic data sets for tests."""

from pathlib import Path

import numpy as np

from worldsim.actions import VIZDOOM_SCHEMA
from worldsim.data import write_episode

AUDIO = {"sample_rate": 22050, "channels": 2, "samples_per_step": 1260}


def counting_episode(path: Path, steps: int = 40, map_id: str = "MAP01", res: int = 16) -> Path:
    """An episode where every field of step t encodes t, to test alignment."""
    t = np.arange(steps)
    frames = np.broadcast_to((t % 256).astype(np.uint8)[:, None, None, None], (steps, res, res, 3)).copy()
    buttons = np.zeros((steps, VIZDOOM_SCHEMA.num_buttons), np.uint8)
    buttons[:, 0] = t % 2
    axes = np.stack([t.astype(np.float32), -t.astype(np.float32)], 1)
    audio = np.broadcast_to((t * 100).astype(np.int16)[:, None, None], (steps, AUDIO["samples_per_step"], 2)).copy()
    pose = np.stack([t * 10.0, t * 0.0, t * 0.0, t * 1.0, t * 0.0], 1).astype(np.float32)
    return write_episode(path, VIZDOOM_SCHEMA, {"frames": frames, "buttons": buttons, "axes": axes, "audio": audio,
                                                 "pose": pose},
                         {"tick_rate": 17.5, "map": map_id, "source": "test"}, audio_spec=AUDIO)


def toy_world(root: Path, episodes: int = 2, steps: int = 60, seed: int = 0) -> Path:
    """A 64×64 world with sound that a tiny model can learn a little of in seconds: a striped
    wall scrolls left/right with turn_right/turn_left, and ATTACK makes a noise burst."""
    rng = np.random.default_rng(seed)
    xs = np.arange(64)
    for e in range(episodes):
        buttons = np.zeros((steps, VIZDOOM_SCHEMA.num_buttons), np.uint8)
        turn = rng.integers(0, 3, steps)  # 0 none, 1 left, 2 right
        buttons[turn == 1, 4] = 1
        buttons[turn == 2, 5] = 1
        buttons[:, 6] = rng.random(steps) < 0.15
        axes = np.zeros((steps, 2), np.float32)
        offset = np.cumsum(np.where(turn == 2, 4, np.where(turn == 1, -4, 0)))
        offset = np.concatenate([[0], offset[:-1]])
        frames = np.zeros((steps, 64, 64, 3), np.uint8)
        audio = np.zeros((steps, AUDIO["samples_per_step"], 2), np.int16)
        for t in range(steps):
            stripe = (((xs + offset[t]) // 8) % 2).astype(np.uint8)
            frames[t, :32] = np.stack([stripe * 200, stripe * 80 + 40, 60 + 0 * stripe], -1)[None]
            frames[t, 32:] = (90, 70, 50)
            if t > 0 and buttons[t - 1, 6]:
                audio[t] = (rng.standard_normal((AUDIO["samples_per_step"], 2)) * 6000).astype(np.int16)
        pose = np.zeros((steps, 5), np.float32)
        pose[:, 3] = -offset * 1.0  # yaw grows to the left; 4 px per turn
        write_episode(root / f"ep_{e:06d}", VIZDOOM_SCHEMA,
                      {"frames": frames, "buttons": buttons, "axes": axes, "audio": audio, "pose": pose},
                      {"tick_rate": 17.5, "map": "MAP01", "source": "test", "wad": "freedoom2"}, audio_spec=AUDIO)
    return root


def plain_episodes(root: Path, schema, episodes: int = 1, steps: int = 30, seed: int = 0, meta: dict | None = None
                   ) -> Path:
    """Random 64×64 frames, silent audio and no-op actions of any action ``schema``."""
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        arrays = {"frames": rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8),
                  "buttons": np.zeros((steps, schema.num_buttons), np.uint8),
                  "axes": np.zeros((steps, schema.num_axes), np.float32),
                  "audio": np.zeros((steps, AUDIO["samples_per_step"], 2), np.int16)}
        write_episode(root / f"ep_{e:06d}", schema, arrays,
                      {"tick_rate": 17.5, "map": "plain", "source": "test", **(meta or {})}, audio_spec=AUDIO)
    return root


def random_world(root: Path, context: int = 4, seed: int = 0, schema=VIZDOOM_SCHEMA, prior_space: str = "latent") -> Path:
    """A tiny untrained world checkpoint (random weights) with start contexts: for runtime,
    env and bridge tests that need the plumbing, not a good model. ``schema``: its actions
    (DOOM's by default; another one gets plain random start frames)."""
    import json

    import torch

    from worldsim.model.audio_codec import AudioCodec, AudioCodecConfig
    from worldsim.model.checkpoint import save_component
    from worldsim.model.dynamics import Dynamics, DynamicsConfig
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
    from worldsim.runtime.starts import write_starts

    torch.manual_seed(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fc_cfg = FrameCodecConfig(channels=(8, 16, 16), latent_channels=4)
    ac_cfg = AudioCodecConfig(widths=(8, 8, 16), latent_channels=4)
    dcfg = DynamicsConfig(latent_channels=4, audio_channels=4, audio_positions=4, d_model=32, n_layers=2, n_heads=2,
                          context=context, turn_weights=(6.0, 4.5, 1.0), n_buttons=schema.num_buttons,
                          n_axes=schema.num_axes, axis_scale=(30.0,) * max(2, schema.num_axes), prior_space=prior_space)
    dyn = Dynamics(dcfg)
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_component(root, "frame_codec", FrameCodec(fc_cfg), fc_cfg)
    save_component(root, "audio_codec", AudioCodec(ac_cfg), ac_cfg)
    save_component(root, "dynamics", dyn, dcfg)
    (root / "world.json").write_text(json.dumps({
        "format": "worldsim-world", "version": 1, "name": "random-test-world", "wad": "freedoom2", "maps": ["MAP01"],
        "tick_rate": 17.5, "resolution": [64, 64], "audio": AUDIO, "schema": schema.to_dict(),
        "sampler": {"steps": 2}}))
    data = root.parent / f"{root.name}_data"
    if schema == VIZDOOM_SCHEMA:
        toy_world(data, episodes=1, steps=30, seed=seed)
    else:
        plain_episodes(data, schema, seed=seed)
    from worldsim.data.episode import open_episodes
    write_starts(open_episodes(data), root, context - 1, n=3)
    return root


def step_all(session, actions) -> list:
    """The chunks of stepping ``session`` through ``actions`` in order."""
    return [session.step(a) for a in actions]
