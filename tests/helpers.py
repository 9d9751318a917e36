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
