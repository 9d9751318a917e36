"""The contract between a world model and the evaluation harness: :class:`StreamingModel`.

Anything that can be evaluated (the trained network, the runtime Session, the built-in
baselines) exposes the same small streaming API. It mirrors how the model is used live:
prime it with some real steps, then give it one action at a time and get the next frame.

Alignment (see ``worldsim/data/FORMAT.md``): at step ``t`` the player sees ``frames[t]``
(with ``audio[t]``, the sound that arrived with it), then applies ``buttons[t]/axes[t]``,
whose effect shows from ``frames[t+1]`` on. The convention used here is:

    A context of ``c`` steps ending at step ``s`` holds the frames and audio of steps
    ``s-c+1 .. s`` (``c`` of them) and the actions of steps ``s-c+1 .. s-1`` (``c-1``
    of them: each context action sits *between* two context frames). The action of step
    ``s`` (the one applied after the last context frame) is **not** in the context: it is
    the argument of the first ``session.step`` call, which returns frame ``s+1`` and
    audio ``s+1``. Every later ``step(a)`` call takes the action applied after the most
    recent frame (real or generated) and returns the next one.

So ``len(context["buttons"]) == len(context["frames"]) - 1`` always, and a model with
``context_steps == 1`` sees a single frame and no actions.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from worldsim.actions import ActionSchema
from worldsim.errors import WorldsimError

Context = Mapping[str, "np.ndarray | None"]


@runtime_checkable
class Session(Protocol):
    """One running rollout, created by :meth:`StreamingModel.open`."""

    def step(self, buttons: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply one action after the latest frame and return the next step.

        Args:
            buttons: ``(NB,)`` uint8, 1 = held during the step.
            axes: ``(NA,)`` float32 axis values during the step.

        Returns:
            ``(frame, audio)``: frame ``(H, W, 3)`` uint8 RGB at ``model.resolution``;
            audio ``(S, C)`` int16 (the sound that arrives with that frame) or ``None``
            when the model has no ``audio_spec``.
        """
        ...


@runtime_checkable
class StreamingModel(Protocol):
    """A world model the harness can evaluate.

    Attributes:
        schema: the action schema the model is conditioned on (must equal the data's).
        resolution: ``(H, W)`` of the frames it takes and returns.
        context_steps: ``c`` ≥ 1, how many real steps it wants as context (frames
            ``s-c+1..s``, actions ``s-c+1..s-1``; see the module docstring).
        audio_spec: ``{"sample_rate", "channels", "samples_per_step"}`` or ``None``
            when the model produces no sound.

    Optional extras the harness uses when present:
        name (str): shown in reports.
        set_memory(enabled: bool): switch long-term memory on/off; enables the
            loop-closure metric.
        Session.close(): called when the harness is done with a session.
    """

    schema: ActionSchema
    resolution: tuple[int, int]
    context_steps: int
    audio_spec: dict[str, int] | None

    def open(self, context: Context, seed: int = 0) -> Session:
        """Start a session from real context.

        Args:
            context: numpy arrays, step axis first: ``frames`` ``(c, H, W, 3)`` uint8,
                ``audio`` ``(c, S, C)`` int16 or ``None``, ``buttons`` ``(c-1, NB)`` uint8,
                ``axes`` ``(c-1, NA)`` float32.
            seed: seeds any sampling, so that a rollout is reproducible.
        """
        ...


class EvalConfigError(WorldsimError, ValueError):
    """The data or the arguments cannot serve this evaluation (too short, schema mismatch, …)."""


class ModelContractError(TypeError):
    """A model or one of its outputs does not follow the StreamingModel contract."""


def check_model(model: Any) -> None:
    """Raise :class:`ModelContractError` naming the first attribute that is missing or wrong."""
    for attr in ("schema", "resolution", "context_steps", "audio_spec", "open"):
        if not hasattr(model, attr):
            raise ModelContractError(f"model {type(model).__name__} lacks {attr!r} (see worldsim.eval.interface.StreamingModel)")
    if not isinstance(model.schema, ActionSchema):
        raise ModelContractError("model.schema must be a worldsim.actions.ActionSchema")
    res = tuple(model.resolution)
    if len(res) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in res):
        raise ModelContractError(f"model.resolution must be (H, W) positive ints, got {model.resolution!r}")
    if not isinstance(model.context_steps, (int, np.integer)) or model.context_steps < 1:
        raise ModelContractError(f"model.context_steps must be an int ≥ 1, got {model.context_steps!r}")
    spec = model.audio_spec
    if spec is not None and not all(isinstance(spec.get(k), int) and spec[k] > 0 for k in ("sample_rate", "channels", "samples_per_step")):
        raise ModelContractError(f"model.audio_spec must be None or {{sample_rate, channels, samples_per_step}}, got {spec!r}")


def model_name(model: Any) -> str:
    return str(getattr(model, "name", type(model).__name__))


def build_context(frames: np.ndarray, buttons: np.ndarray, axes: np.ndarray, audio: np.ndarray | None,
                  end: int, steps: int) -> dict[str, np.ndarray | None]:
    """The context of ``steps`` steps ending at step ``end`` (inclusive), per the convention above.

    ``frames`` etc. are one episode's arrays (memory-mapped is fine); the slices are copied.
    """
    if steps < 1 or end - steps + 1 < 0:
        raise ValueError(f"context of {steps} steps cannot end at step {end}")
    lo = end - steps + 1
    return {
        "frames": np.array(frames[lo:end + 1]),  # (c, H, W, 3)
        "audio": None if audio is None else np.array(audio[lo:end + 1]),  # (c, S, C)
        "buttons": np.array(buttons[lo:end]),  # (c-1, NB)
        "axes": np.array(axes[lo:end]),  # (c-1, NA)
    }


def sanitize_frame(frame: Any, resolution: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Coerce a model's frame to ``(H, W, 3)`` uint8; returns ``(frame, was_bad)``.

    Float frames are accepted (assumed 0..255) but NaN/inf make the step *bad*: it is
    replaced by zeros and counted by the drift/collapse checks. A wrong shape raises.
    """
    arr = np.asarray(frame)
    h, w = resolution
    if arr.shape != (h, w, 3):
        raise ModelContractError(f"session.step returned a frame of shape {arr.shape}, expected {(h, w, 3)}")
    if arr.dtype == np.uint8:
        return arr, False
    f = arr.astype(np.float32)
    if not np.all(np.isfinite(f)):
        return np.zeros((h, w, 3), np.uint8), True
    return np.clip(np.rint(f), 0, 255).astype(np.uint8), False


def sanitize_audio(audio: Any, spec: dict[str, int] | None) -> np.ndarray | None:
    """Coerce a model's audio to ``(S, C)`` int16, or ``None`` when it has no audio."""
    if spec is None or audio is None:
        return None
    arr = np.asarray(audio)
    shape = (spec["samples_per_step"], spec["channels"])
    if arr.shape != shape:
        raise ModelContractError(f"session.step returned audio of shape {arr.shape}, expected {shape}")
    if arr.dtype == np.int16:
        return arr
    f = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=32767, neginf=-32768)
    return np.clip(np.rint(f), -32768, 32767).astype(np.int16)
