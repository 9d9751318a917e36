"""Action schemas and action scripts.

Every data set and every model declares an :class:`ActionSchema`: named buttons
(booleans, held or not during a step) plus named continuous axes. Buttons may be
grouped into *exclusive groups*, of which at most one button is held at a time
(a Gymnasium ``Discrete`` space is one such group).

An action script is a JSON list with one entry per step::

    [{"keys": ["forward", "run"], "mouse": [2.5, 0]},
     {"keys": ["attack"]},
     {},
     {"axes": {"mouse_dx": -1.0}}]

Every field is optional (``{}`` means no input). ``"mouse": [dx, dy]`` is
shorthand for the axes ``mouse_dx`` and ``mouse_dy``. Unknown keys, button or
axis names are errors that name the entry at fault. An axis value must be finite and within
±``AXIS_LIMIT`` (a client's 1e30 would overflow the network's activations and fail the tick of
every session batched with it); a schema with bounds then clips it to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from worldsim.errors import read_json

AXIS_LIMIT = 1e6  # no input device means more; the networks stay finite far beyond it (1e9 measured)


def check_axes(axes: Any, where: str = "action") -> None:
    """ActionError unless every axis value is finite and within ±AXIS_LIMIT: the rule every
    action form meets (:meth:`ActionSchema.parse` applies it value by value, naming the axis)."""
    a = np.asarray(axes, np.float64)
    if not np.all(np.isfinite(a)):
        raise ActionError(f"{where} axes must be finite, got {a.tolist()}")
    if np.any(np.abs(a) > AXIS_LIMIT):
        raise ActionError(f"{where} axes must be within ±{AXIS_LIMIT:g}, got {a.tolist()}")

ENTRY_FIELDS = ("keys", "axes", "mouse")
ARRAY_FIELDS = ("buttons", "axes")  # the array form (ActionSchema.parse)


class ActionError(ValueError):
    """An action or action script does not fit the schema."""


@dataclass(frozen=True)
class Action:
    """One step of input: which buttons are held and the value of each axis."""

    buttons: np.ndarray  # (NB,) uint8, 1 = held
    axes: np.ndarray  # (NA,) float32

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Action):
            return NotImplemented
        return np.array_equal(self.buttons, other.buttons) and np.array_equal(self.axes, other.axes)

    def __hash__(self) -> int:
        return hash((self.buttons.tobytes(), self.axes.tobytes()))


@dataclass(frozen=True)
class ActionSchema:
    """Named buttons plus named continuous axes.

    Attributes:
        buttons: button names, in the order of the encoded button vector.
        axes: axis names, in the order of the encoded axis vector.
        groups: exclusive groups of button names (at most one held per group).
        axis_low / axis_high: optional per-axis bounds; values outside are clipped.
        units: free-text unit per axis, for documentation (e.g. "deg/step").
    """

    buttons: tuple[str, ...]
    axes: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    axis_low: tuple[float, ...] | None = None
    axis_high: tuple[float, ...] | None = None
    units: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = list(self.buttons) + list(self.axes)
        if len(set(names)) != len(names):
            raise ActionError(f"action schema has duplicate names: {names}")
        for g in self.groups:
            for b in g:
                if b not in self.buttons:
                    raise ActionError(f"exclusive group names unknown button {b!r}")
        for bound in (self.axis_low, self.axis_high):
            if bound is not None and len(bound) != len(self.axes):
                raise ActionError("axis bounds must have one value per axis")

    # ----- sizes and conversions -------------------------------------------------
    @property
    def num_buttons(self) -> int:
        return len(self.buttons)

    @property
    def num_axes(self) -> int:
        return len(self.axes)

    def noop(self) -> Action:
        return Action(np.zeros(self.num_buttons, np.uint8), np.zeros(self.num_axes, np.float32))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"buttons": list(self.buttons), "axes": list(self.axes)}
        if self.groups:
            d["groups"] = [list(g) for g in self.groups]
        if self.axis_low is not None:
            d["axis_low"] = list(self.axis_low)
        if self.axis_high is not None:
            d["axis_high"] = list(self.axis_high)
        if self.units:
            d["units"] = dict(self.units)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActionSchema":
        if not isinstance(d, Mapping) or "buttons" not in d:
            raise ActionError("an action schema is a map with at least 'buttons' (and usually 'axes')")
        try:
            return cls(
                buttons=tuple(str(b) for b in d["buttons"]),
                axes=tuple(str(a) for a in d.get("axes", ())),
                groups=tuple(tuple(str(b) for b in g) for g in d.get("groups", ())),
                axis_low=tuple(float(v) for v in d["axis_low"]) if d.get("axis_low") is not None else None,
                axis_high=tuple(float(v) for v in d["axis_high"]) if d.get("axis_high") is not None else None,
                units=dict(d.get("units", {})),
            )
        except (TypeError, ValueError) as e:
            raise ActionError(f"malformed action schema: {e}") from None

    # ----- parsing ---------------------------------------------------------------
    def parse(self, entry: Mapping[str, Any] | None, where: str = "action") -> Action:
        """Turn one script entry (``{"keys": [...], "axes": {...}, "mouse": [dx, dy]}``) into an Action."""
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise ActionError(f"{where}: expected an object like {{\"keys\": [...]}}, got {type(entry).__name__}")
        if "buttons" in entry or isinstance(entry.get("axes"), (list, tuple)):
            return self._parse_arrays(entry, where)
        unknown = set(entry) - set(ENTRY_FIELDS)
        if unknown:
            raise ActionError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {list(ENTRY_FIELDS)}")
        buttons = np.zeros(self.num_buttons, np.uint8)
        keys = entry.get("keys", [])
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            raise ActionError(f"{where}: 'keys' must be a list of button names")
        for k in keys:
            if k not in self.buttons:
                raise ActionError(f"{where}: unknown button {k!r}; this schema has {list(self.buttons)}")
            buttons[self.buttons.index(k)] = 1
        for g in self.groups:
            held = [b for b in g if buttons[self.buttons.index(b)]]
            if len(held) > 1:
                raise ActionError(f"{where}: buttons {held} are exclusive (at most one at a time)")
        axes = np.zeros(self.num_axes, np.float32)
        values: dict[str, Any] = {}
        if "mouse" in entry:
            m = entry["mouse"]
            if not isinstance(m, Sequence) or isinstance(m, str) or len(m) != 2:
                raise ActionError(f"{where}: 'mouse' must be [dx, dy]")
            values["mouse_dx"], values["mouse_dy"] = m
        ax = entry.get("axes", {})
        if not isinstance(ax, Mapping):
            raise ActionError(f"{where}: 'axes' must be an object {{name: value}}")
        for name, v in ax.items():
            if name in values:
                raise ActionError(f"{where}: axis {name!r} given twice ('mouse' and 'axes')")
            values[name] = v
        for name, v in values.items():
            if name not in self.axes:
                raise ActionError(f"{where}: unknown axis {name!r}; this schema has {list(self.axes)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ActionError(f"{where}: axis {name!r} must be a finite number, got {v!r}")
            if abs(v) > AXIS_LIMIT:
                raise ActionError(f"{where}: axis {name!r} must be within ±{AXIS_LIMIT:g}, got {v!r}")
            i = self.axes.index(name)
            lo = self.axis_low[i] if self.axis_low is not None else -math.inf
            hi = self.axis_high[i] if self.axis_high is not None else math.inf
            axes[i] = min(max(float(v), lo), hi)
        return Action(buttons, axes)

    def _parse_arrays(self, entry: Mapping[str, Any], where: str) -> Action:
        """The array form ``{"buttons": [0, 1, …], "axes": [dx, …]}``: one value per button (0/1)
        and per axis of the schema, in its order (the bridge protocol's compact form)."""
        unknown = set(entry) - set(ARRAY_FIELDS)
        if unknown:
            raise ActionError(f"{where}: the array form takes only {list(ARRAY_FIELDS)}, not {sorted(unknown)}")
        b, x = entry.get("buttons", [0] * self.num_buttons), entry.get("axes", [0.0] * self.num_axes)
        if (isinstance(b, (str, bytes)) or not isinstance(b, Sequence) or len(b) != self.num_buttons
                or any(isinstance(v, float) or v not in (0, 1) for v in b)):
            raise ActionError(f"{where}: 'buttons' must be {self.num_buttons} values of 0/1 in the order {list(self.buttons)}")
        if (isinstance(x, (str, bytes)) or not isinstance(x, Sequence) or len(x) != self.num_axes
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in x)):
            raise ActionError(f"{where}: 'axes' must be {self.num_axes} numbers in the order {list(self.axes)}")
        return self.parse({"keys": [n for n, v in zip(self.buttons, b) if v],
                           "axes": {n: v for n, v in zip(self.axes, x)}}, where)

    def to_entry(self, action: Action) -> dict[str, Any]:
        """The script entry for an action (inverse of :meth:`parse`)."""
        entry: dict[str, Any] = {}
        keys = [b for b, v in zip(self.buttons, action.buttons) if v]
        if keys:
            entry["keys"] = keys
        axes = {a: float(v) for a, v in zip(self.axes, action.axes) if v != 0}
        if axes:
            entry["axes"] = axes
        return entry

    def from_arrays(self, buttons: np.ndarray, axes: np.ndarray) -> Action:
        b = np.asarray(buttons, np.uint8).reshape(self.num_buttons)
        a = np.asarray(axes, np.float32).reshape(self.num_axes)
        return Action(b, a)

    def stack(self, actions: Iterable[Action]) -> tuple[np.ndarray, np.ndarray]:
        """Actions → (buttons (T, NB) uint8, axes (T, NA) float32)."""
        acts = list(actions)
        b = np.zeros((len(acts), self.num_buttons), np.uint8)
        a = np.zeros((len(acts), self.num_axes), np.float32)
        for t, act in enumerate(acts):
            b[t], a[t] = act.buttons, act.axes
        return b, a


#: The flagship schema: DOOM as played in ViZDoom with keyboard and mouse.
#: mouse_dx > 0 turns right, mouse_dy > 0 looks down, in degrees per step.
VIZDOOM_SCHEMA = ActionSchema(
    buttons=("forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use", "run"),
    axes=("mouse_dx", "mouse_dy"),
    units={"mouse_dx": "deg/step, + turns right", "mouse_dy": "deg/step, + looks down"},
)


def parse_script(data: Any, schema: ActionSchema, source: str = "action script") -> list[Action]:
    """Parse an already-loaded action script (a list of entries)."""
    if not isinstance(data, list):
        raise ActionError(f"{source}: an action script is a JSON list with one entry per step")
    return [schema.parse(e, where=f"{source}: entry {i}") for i, e in enumerate(data)]


def load_script(path: str | Path, schema: ActionSchema) -> list[Action]:
    """Load a JSON action script from a file, with errors that name the file and entry."""
    p = Path(path)
    data = read_json(p, lambda m: ActionError(f"{p}: {m}"), "no such action script")
    return parse_script(data, schema, source=str(p))
