"""Gymnasium action spaces ↔ worldsim action schemas.

- ``Discrete(n, start)`` → n buttons ``action_<start+i>`` in one exclusive group; no key held
  means the space's first action.
- ``MultiBinary(n)`` → n buttons ``button_<i>``.
- ``MultiDiscrete(nvec)`` → per dimension d, buttons ``d<d>_<v>`` for v ≥ 1 in one exclusive
  group; no key held in a group means value 0.
- ``Box(shape)`` → prod(shape) axes ``axis_<i>`` with the box's bounds (values are clipped).

A recording keeps the env's own space as JSON (:func:`space_to_dict`, the episode key
``env_action_space``) so that a world trained on it can take the env's actions unchanged
(:class:`worldsim.envs.WorldModelEnv`): a policy written for the env steps its learned twin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worldsim.actions import Action, ActionError, ActionSchema, check_axes


def schema_from_space(space: Any) -> ActionSchema:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        names = tuple(f"action_{int(space.start) + i}" for i in range(int(space.n)))
        return ActionSchema(buttons=names, groups=(names,))
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return ActionSchema(buttons=tuple(f"button_{i}" for i in range(n)))
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        groups = tuple(tuple(f"d{d}_{v}" for v in range(1, int(n))) for d, n in enumerate(nvec))
        return ActionSchema(buttons=tuple(b for g in groups for b in g), groups=tuple(g for g in groups if g))
    if isinstance(space, spaces.Box):
        n = int(np.prod(space.shape))
        low = np.broadcast_to(space.low, space.shape).reshape(-1).astype(float)
        high = np.broadcast_to(space.high, space.shape).reshape(-1).astype(float)
        return ActionSchema(buttons=(), axes=tuple(f"axis_{i}" for i in range(n)),
                            axis_low=tuple(low.tolist()), axis_high=tuple(high.tolist()))
    raise ActionError(f"unsupported action space {space!r}: use Discrete, MultiBinary, MultiDiscrete or Box")


def to_env_action(action: Action, space: Any, schema: ActionSchema) -> Any:
    """A worldsim Action → the value the env's `step` takes."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        held = np.flatnonzero(action.buttons)
        return np.int64(int(space.start) + (int(held[0]) if len(held) else 0))
    if isinstance(space, spaces.MultiBinary):
        return action.buttons.astype(np.int8).reshape(space.shape)
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        out = np.zeros(len(nvec), np.int64)
        i = 0
        for d, n in enumerate(nvec):
            group = action.buttons[i:i + int(n) - 1]
            held = np.flatnonzero(group)
            out[d] = int(held[0]) + 1 if len(held) else 0
            i += int(n) - 1
        return out.reshape(space.shape)
    if isinstance(space, spaces.Box):
        return action.axes.astype(space.dtype).reshape(space.shape)
    raise ActionError(f"unsupported action space {space!r}")


def from_env_action(value: Any, space: Any, schema: ActionSchema) -> Action:
    """The env's action value → a worldsim Action (inverse of :func:`to_env_action`)."""
    from gymnasium import spaces

    buttons = np.zeros(schema.num_buttons, np.uint8)
    axes = np.zeros(schema.num_axes, np.float32)
    if isinstance(space, spaces.Discrete):
        buttons[int(value) - int(space.start)] = 1
    elif isinstance(space, spaces.MultiBinary):
        buttons[:] = np.asarray(value).reshape(-1) != 0
    elif isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        i = 0
        for v, n in zip(np.asarray(value).reshape(-1), nvec):
            if int(v) > 0:
                buttons[i + int(v) - 1] = 1
            i += int(n) - 1
    elif isinstance(space, spaces.Box):
        axes[:] = np.asarray(value, np.float32).reshape(-1)
    elif isinstance(space, spaces.Dict) and set(space.spaces) <= {"buttons", "axes"}:
        if not isinstance(value, dict) or set(value) != set(space.spaces):
            raise ActionError(f"expected an action dict with keys {sorted(space.spaces)}, got {value!r:.80}")
        try:
            if "buttons" in value:
                buttons[:] = np.asarray(value["buttons"]).reshape(schema.num_buttons) != 0
            if "axes" in value:
                axes[:] = np.asarray(value["axes"], np.float32).reshape(schema.num_axes)
        except (ValueError, TypeError) as e:
            raise ActionError(f"bad action {value!r:.80}: {e}") from None
    else:
        raise ActionError(f"unsupported action space {space!r}")
    check_axes(axes)  # every space's values: a Box's may be anything its caller sent
    return Action(buttons, axes)


def space_from_schema(schema: ActionSchema, axis_bound: float | None = None) -> Any:
    """A Gymnasium space for a schema: Dict(buttons=MultiBinary, axes=Box) (either part may be absent).
    ``axis_bound`` bounds axes the schema leaves unbounded (to ±axis_bound)."""
    from gymnasium import spaces

    parts: dict[str, Any] = {}
    if schema.num_buttons:
        parts["buttons"] = spaces.MultiBinary(schema.num_buttons)
    if schema.num_axes:
        inf = np.inf if axis_bound is None else float(axis_bound)
        low = np.array(schema.axis_low if schema.axis_low is not None else [-inf] * schema.num_axes, np.float32)
        high = np.array(schema.axis_high if schema.axis_high is not None else [inf] * schema.num_axes, np.float32)
        parts["axes"] = spaces.Box(low, high, dtype=np.float32)
    return spaces.Dict(parts)


SPACE_TYPES = ("Discrete", "MultiBinary", "MultiDiscrete", "Box")


def space_to_dict(space: Any) -> dict[str, Any]:
    """An action space as JSON: ``{"type": ..., ...}`` (infinite Box bounds as ``null``)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": [int(n) for n in space.shape]}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist()}
    if isinstance(space, spaces.Box):
        def bound(a: np.ndarray) -> list:
            return [float(v) if np.isfinite(v) else None for v in np.broadcast_to(a, space.shape).reshape(-1)]
        return {"type": "Box", "shape": [int(n) for n in space.shape], "low": bound(space.low),
                "high": bound(space.high), "dtype": str(np.dtype(space.dtype))}
    raise ActionError(f"unsupported action space {space!r}: use Discrete, MultiBinary, MultiDiscrete or Box")


def space_from_dict(d: Any, where: str = "env_action_space") -> Any:
    """The inverse of :func:`space_to_dict`; a malformed description is an :class:`ActionError`."""
    from gymnasium import spaces

    if not isinstance(d, dict) or d.get("type") not in SPACE_TYPES:
        raise ActionError(f"{where}: expected an object with \"type\" one of {list(SPACE_TYPES)}, got {d!r:.80}")
    try:
        kind = d["type"]
        if kind == "Discrete":
            return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
        if kind == "MultiBinary":
            shape = [int(n) for n in d["shape"]]
            return spaces.MultiBinary(shape[0] if len(shape) == 1 else shape)  # MultiBinary(5) ≠ ([5]) to gymnasium
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.asarray(d["nvec"], np.int64))
        shape, dtype = tuple(int(n) for n in d["shape"]), np.dtype(d.get("dtype", "float32"))
        low = np.array([-np.inf if v is None else float(v) for v in d["low"]], dtype).reshape(shape)
        high = np.array([np.inf if v is None else float(v) for v in d["high"]], dtype).reshape(shape)
        return spaces.Box(low, high, shape, dtype=dtype)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise ActionError(f"{where}: bad {d.get('type')} description {d!r:.80} ({e})") from None
