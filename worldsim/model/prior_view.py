"""``worldsim eval --checkpoint prior:WORLD``: a world's turn prior shown in place of its pictures.

Each tick the dynamics starts from a turn prior — the previous latent re-aimed by the tick's turn
(learned, or decoded / warped / encoded) — and samples the new latent from noise conditioned on it.
This view shows that prior, decoded, while the world itself steps on underneath (same state, same
random draws, same sound), so its 1-tick scores say how far the re-aimed previous picture alone gets
and, beside the world's own report, what the dynamics' sample adds or takes away. Past one tick the
prior is the world's own previous latent re-aimed: a diagnostic, not a model.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from worldsim.model.world_model import WorldModel, WorldStream


class PriorView:
    """A StreamingModel over a :class:`WorldModel` whose frames are its decoded turn prior."""

    def __init__(self, world: WorldModel):
        self.world = world
        self.context_steps, self.schema, self.resolution = world.context_steps, world.schema, world.resolution
        self.audio_spec, self.name = world.audio_spec, f"prior:{world.name}"

    def open(self, context: Mapping[str, np.ndarray | None], seed: int = 0) -> "PriorStream":
        return PriorStream(self.world.open(context, seed))


class PriorStream:
    def __init__(self, stream: WorldStream):
        self.stream = stream

    @torch.no_grad()
    def step(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        w, st = self.stream.model, self.stream.state
        _, feats = w._actions(np.asarray(buttons)[None], np.asarray(axes)[None])
        prior = w._turn_prior(st.prev, feats, st.prev_frame)  # (1, C, h, w): what the tick starts from
        with w.autocast:
            picture = w.frame_codec.decode(prior).cpu().numpy()[0]  # (H, W, 3) uint8
        _, audio = self.stream.step(buttons, axes)
        return picture, audio

    def close(self) -> None:
        self.stream.close()


def load_prior_view(spec: str, **kw: Any) -> PriorView:
    """The loader of ``prior:WORLD`` specs: the world as ``worldsim eval`` loads it, viewed through its prior."""
    from worldsim.model.world_model import _eval_loader

    return PriorView(_eval_loader(spec, **kw))
