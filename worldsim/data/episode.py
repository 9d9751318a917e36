"""The episode format: one directory per episode, `meta.json` plus one `.npy` per field.

See FORMAT.md beside this file for the specification. `.npy` files are memory-mapped
on open, so random access for training touches only the steps it reads.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.actions import ActionSchema, ActionError
from worldsim.errors import read_json

FORMAT_NAME = "worldsim-episode"
FORMAT_VERSION = 1
META_FILE = "meta.json"

# field name -> (dtype, shape after the step axis as a function of meta, required)
REQUIRED_FIELDS = ("frames", "buttons", "axes")
OPTIONAL_FIELDS = ("audio", "pose", "reward", "terminated", "depth")
POSE_NAMES = ("x", "y", "z", "yaw", "pitch")


class EpisodeFormatError(ValueError):
    """An episode on disk is missing, corrupt, truncated or of another version."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _expected(meta: dict[str, Any], name: str, steps: int) -> tuple[np.dtype, tuple[int, ...]]:
    h, w = meta["resolution"]
    schema = meta["_schema"]
    if name == "frames":
        return np.dtype(np.uint8), (steps, h, w, 3)
    if name == "buttons":
        return np.dtype(np.uint8), (steps, schema.num_buttons)
    if name == "axes":
        return np.dtype(np.float32), (steps, schema.num_axes)
    if name == "audio":
        a = meta["audio"]
        return np.dtype(np.int16), (steps, a["samples_per_step"], a["channels"])
    if name == "pose":
        return np.dtype(np.float32), (steps, len(POSE_NAMES))
    if name == "reward":
        return np.dtype(np.float32), (steps,)
    if name == "terminated":
        return np.dtype(np.bool_), (steps,)
    if name == "depth":
        return np.dtype(np.uint8), (steps, h, w)
    raise KeyError(name)


def _check_meta(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise EpisodeFormatError(path, "meta.json must hold a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise EpisodeFormatError(path, f"meta.json 'format' must be {FORMAT_NAME!r}, got {meta.get('format')!r}")
    v = meta.get("format_version")
    if not isinstance(v, int):
        raise EpisodeFormatError(path, "meta.json has no integer 'format_version'")
    if v != FORMAT_VERSION:
        newer = "a newer" if v > FORMAT_VERSION else "an older"
        raise EpisodeFormatError(path, f"format version {v} was written by {newer} worldsim; this one reads version {FORMAT_VERSION}")
    for key in ("steps", "resolution", "action_schema", "tick_rate"):
        if key not in meta:
            raise EpisodeFormatError(path, f"meta.json lacks required key {key!r}")
    if not isinstance(meta["steps"], int) or meta["steps"] < 1:
        raise EpisodeFormatError(path, "'steps' must be a positive integer")
    res = meta["resolution"]
    if not (isinstance(res, list) and len(res) == 2 and all(isinstance(r, int) and r > 0 for r in res)):
        raise EpisodeFormatError(path, "'resolution' must be [height, width]")
    if not isinstance(meta["tick_rate"], (int, float)) or meta["tick_rate"] <= 0:
        raise EpisodeFormatError(path, "'tick_rate' must be a positive number (steps per second)")
    try:
        meta["_schema"] = ActionSchema.from_dict(meta["action_schema"])
    except ActionError as e:
        raise EpisodeFormatError(path, f"action_schema: {e}") from None
    a = meta.get("audio")
    if a is not None:
        if not isinstance(a, dict) or not all(isinstance(a.get(k), int) and a.get(k) > 0 for k in ("sample_rate", "channels", "samples_per_step")):
            raise EpisodeFormatError(path, "'audio' must be null or {sample_rate, channels, samples_per_step} (positive integers)")
    return meta


class Episode:
    """A read-only, memory-mapped episode.

    Attributes are numpy arrays with the step axis first: ``frames`` (T, H, W, 3) uint8,
    ``buttons`` (T, NB) uint8, ``axes`` (T, NA) float32, and, where recorded,
    ``audio`` (T, S, C) int16, ``pose`` (T, 5) float32, ``reward`` (T,), ``terminated`` (T,),
    ``depth`` (T, H, W) uint8. Missing optional fields are ``None``.
    """

    def __init__(self, path: str | os.PathLike, mmap: bool = True):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not self.path.is_dir():
            raise EpisodeFormatError(self.path, "not an episode directory (no such directory)")
        raw = read_json(meta_path, lambda m: EpisodeFormatError(meta_path, m), "missing; every episode directory needs meta.json")
        self.meta = _check_meta(meta_path, raw)
        self.schema: ActionSchema = self.meta.pop("_schema")
        self.steps: int = self.meta["steps"]
        self._arrays: dict[str, np.ndarray | None] = {}
        check = dict(self.meta, _schema=self.schema)
        for name in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            f = self.path / f"{name}.npy"
            if not f.exists():
                if name in REQUIRED_FIELDS:
                    raise EpisodeFormatError(f, "missing required field file")
                if name == "audio" and self.meta.get("audio") is not None:
                    raise EpisodeFormatError(f, "meta.json declares audio but audio.npy is missing")
                self._arrays[name] = None
                continue
            if name == "audio" and self.meta.get("audio") is None:
                raise EpisodeFormatError(meta_path, "audio.npy exists but meta.json declares no 'audio' spec")
            self._arrays[name] = _load_array(f, *_expected(check, name, self.steps), mmap=mmap)

    def __len__(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return f"Episode({str(self.path)!r}, steps={self.steps}, map={self.map_id!r})"

    @property
    def map_id(self) -> str:
        return str(self.meta.get("map", self.meta.get("env_id", "unknown")))

    @property
    def tick_rate(self) -> float:
        return float(self.meta["tick_rate"])

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.meta["resolution"])  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        arrays = self.__dict__.get("_arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def verify(self) -> None:
        """Check the crc32 checksums recorded in meta.json (slow: reads every byte)."""
        for name, info in self.meta.get("checksums", {}).items():
            arr = self._arrays.get(name)
            if arr is None:
                raise EpisodeFormatError(self.path / f"{name}.npy", "listed in checksums but missing")
            crc = zlib.crc32(np.ascontiguousarray(arr).data) & 0xFFFFFFFF
            if crc != info:
                raise EpisodeFormatError(self.path / f"{name}.npy", f"checksum mismatch (data corrupt): crc32 {crc:08x} != {info:08x}")


def _load_array(f: Path, dtype: np.dtype, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    try:
        arr = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "mmap length" in msg or "cannot reshape" in msg or "size" in msg:
            raise EpisodeFormatError(f, f"truncated: the file is shorter than its header says ({msg})") from None
        raise EpisodeFormatError(f, f"not a readable .npy array ({msg})") from None
    except (OSError, EOFError) as e:
        raise EpisodeFormatError(f, f"not a readable .npy array ({e})") from None
    if arr.dtype != dtype:
        raise EpisodeFormatError(f, f"dtype {arr.dtype}, expected {dtype}")
    if tuple(arr.shape) != shape:
        raise EpisodeFormatError(f, f"shape {tuple(arr.shape)}, expected {shape}")
    return arr


@dataclass
class EpisodeWriter:
    """Accumulates steps in memory and writes one episode atomically on :meth:`close`.

    The episode is written to a temporary sibling directory and renamed into place,
    so a crash never leaves a half-written episode that looks complete.
    """

    path: Path
    schema: ActionSchema
    meta: dict[str, Any]
    resolution: tuple[int, int]
    audio_spec: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._cols: dict[str, list[np.ndarray]] = {k: [] for k in REQUIRED_FIELDS + OPTIONAL_FIELDS}

    def __len__(self) -> int:
        return len(self._cols["frames"])

    def append(self, frame: np.ndarray, buttons: np.ndarray, axes: np.ndarray, audio: np.ndarray | None = None,
               pose: np.ndarray | None = None, reward: float | None = None, terminated: bool | None = None,
               depth: np.ndarray | None = None) -> None:
        self._cols["frames"].append(np.asarray(frame, np.uint8))
        self._cols["buttons"].append(np.asarray(buttons, np.uint8))
        self._cols["axes"].append(np.asarray(axes, np.float32))
        for name, v in (("audio", audio), ("pose", pose), ("reward", reward), ("terminated", terminated), ("depth", depth)):
            if v is not None:
                self._cols[name].append(np.asarray(v))

    def close_partial(self, extra_meta: dict[str, Any] | None = None) -> Path | None:
        """Close what was recorded so far, if anything (None otherwise): a recording cut short —
        Ctrl-C, a client gone, a server stopping. A step whose :meth:`append` was interrupted
        between its fields is dropped first, so the rest still forms an episode."""
        n = min(len(v) for k, v in self._cols.items() if v or k in REQUIRED_FIELDS)
        for v in self._cols.values():
            del v[n:]
        return self.close(extra_meta) if n else None

    def close(self, extra_meta: dict[str, Any] | None = None) -> Path:
        cols = {k: v for k, v in self._cols.items() if v}
        arrays = {k: np.stack(v) for k, v in cols.items()}
        return write_episode(self.path, self.schema, arrays, dict(self.meta, **(extra_meta or {})),
                             self.resolution, self.audio_spec)


def write_episode(path: str | os.PathLike, schema: ActionSchema, arrays: dict[str, np.ndarray],
                  meta: dict[str, Any], resolution: tuple[int, int] | None = None,
                  audio_spec: dict[str, int] | None = None) -> Path:
    """Write arrays (``frames``, ``buttons``, ``axes`` and any optional fields) as one episode."""
    path = Path(path)
    steps = len(arrays["frames"])
    if resolution is None:
        resolution = tuple(arrays["frames"].shape[1:3])  # type: ignore[assignment]
    full = dict(meta)
    full.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, steps=steps, resolution=list(resolution),
                action_schema=schema.to_dict(), audio=audio_spec)
    full.setdefault("tick_rate", 1.0)
    check = _check_meta(path, dict(full))
    dtypes = {}
    for name, arr in arrays.items():
        dtype, shape = _expected(check, name, steps)
        arr = np.asarray(arr)
        if tuple(arr.shape) != shape:
            raise EpisodeFormatError(path, f"field {name!r} has shape {arr.shape}, expected {shape}")
        arrays[name] = np.ascontiguousarray(arr.astype(dtype, copy=False))
        dtypes[name] = str(dtype)
    full["checksums"] = {k: zlib.crc32(a.data) & 0xFFFFFFFF for k, a in arrays.items()}
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
    (tmp / META_FILE).write_text(json.dumps(full, indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def next_episode_index(root: str | os.PathLike) -> int:
    """The next free `ep_NNNNNN` number under root, so recording into an existing data set appends."""
    taken = [int(p.name[3:]) for p in Path(root).glob("ep_*") if p.is_dir() and p.name[3:].isdigit()]
    return max(taken, default=-1) + 1


def list_episodes(root: str | os.PathLike) -> list[Path]:
    """Episode directories under root (root itself if it is one), sorted by path."""
    root = Path(root)
    if not root.exists():
        raise EpisodeFormatError(root, "no such data directory")
    if (root / META_FILE).exists():
        return [root]
    eps = sorted(p.parent for p in root.rglob(META_FILE) if not p.parent.name.endswith(".partial"))
    if not eps:
        raise EpisodeFormatError(root, "holds no episodes (no */meta.json found)")
    return eps


def open_episodes(root: str | os.PathLike) -> list[Episode]:
    return [Episode(p) for p in list_episodes(root)]
