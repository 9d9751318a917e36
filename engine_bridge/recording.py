"""An engine's own gameplay recorded through the bridge (capability ``record``, PROTOCOL.md).

`worldsim record bridge --out DIR` runs a bridge server without a world: an engine opens a
recording (REC_OPEN: its action schema, tick rate, sound format, extra episode meta), sends
what its player saw and did once per tick (REC_STEP: frame, sound, action, and the optional
fields it declared) and closes it (REC_CLOSE). Each recording becomes episodes in worldsim's
episode format (worldsim/data/FORMAT.md) — the same data `worldsim record vizdoom|gym` write,
ready for `worldsim train`.

Frames of any size are resized (area filter) to the server's resolution, as `worldsim record
gym` does. A recording longer than ``episode_steps`` rolls over into the next episode, so the
server's memory stays bounded and nothing is lost; a client that goes away (heartbeat timeout
plus resume window) or a server that stops gets its open episode written, marked in its meta
(``ended_by``: ``disconnected`` / ``server_stopped``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine_bridge import protocol as P
from worldsim.actions import ActionError, ActionSchema
from worldsim.data.episode import EpisodeWriter, next_episode_index

STEP_FIELDS = ("pose", "reward", "terminated")  # optional per-step fields a recording may declare
# meta keys the episode format owns (written from the recording's declarations, not taken from a client)
FORMAT_KEYS = {"format", "format_version", "steps", "resolution", "tick_rate", "action_schema", "audio", "checksums"}


@dataclass
class RecordConfig:
    out: str                      # episodes are written here (appending to a data set already there)
    resolution: int = 64          # stored frames are resolution × resolution
    episode_steps: int = 2000     # a longer recording continues in the next episode
    max_open: int = 16            # recordings open at once, over all clients
    episode_mb: int = 128         # and sooner when its steps would hold more than this in memory
                                  # (a recording declaring huge sound chunks cannot exhaust the server)


@dataclass
class _Rec:
    id: str
    token: str
    schema: ActionSchema
    meta: dict[str, Any]
    tick_rate: float
    audio: dict[str, int] | None
    fields: tuple[str, ...]
    episode_steps: int = 1        # steps per episode file for this recording (see RecordConfig)
    writer: EpisodeWriter | None = None
    episodes: list[str] = field(default_factory=list)
    steps: int = 0
    last: tuple[int, dict] | None = None   # (rid, reply body) of the last REC_STEP, for a retried request


def _int(body: dict, key: str, lo: int, hi: int, what: str) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise P.ProtocolError("BAD_REQUEST", f"{what}.{key} must be an integer {lo}..{hi}, got {v!r:.40}")
    return v


def _audio_spec(a: Any) -> dict[str, int] | None:
    if a is None:
        return None
    if not isinstance(a, dict):
        raise P.ProtocolError("BAD_REQUEST", "audio must be nil or {sample_rate, channels, samples_per_step}")
    return {"sample_rate": _int(a, "sample_rate", 1000, 384000, "audio"), "channels": _int(a, "channels", 1, 8, "audio"),
            "samples_per_step": _int(a, "samples_per_step", 1, 1 << 16, "audio")}


def _meta(m: Any) -> dict[str, Any]:
    if m is None:
        return {}
    if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
        raise P.ProtocolError("BAD_REQUEST", "meta must be a map with string keys")
    owned = sorted(set(m) & FORMAT_KEYS)
    if owned:
        raise P.ProtocolError("BAD_REQUEST", f"meta keys {owned} belong to the episode format (declare them with "
                                             "schema / tick_rate / audio instead)")
    for k, v in m.items():
        if not (_plain(v) or isinstance(v, list) and all(_plain(x) for x in v)):
            raise P.ProtocolError("BAD_REQUEST", f"meta[{k!r}] must be a string, finite number, bool, nil or a list "
                                                 "of those (it is written to the episode's meta.json)")
    return dict(m)


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int)) or isinstance(v, float) and math.isfinite(v)


class Recorder:
    """The open recordings of a bridge server and the episodes they write."""

    def __init__(self, cfg: RecordConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.recs: dict[str, _Rec] = {}
        self.written: list[str] = []
        self._n = 0

    # ---- requests ---------------------------------------------------------------------
    def open(self, token: str, body: dict) -> dict[str, Any]:
        if len(self.recs) >= self.cfg.max_open:
            raise P.ProtocolError("CAPACITY", f"server holds its maximum of {self.cfg.max_open} open recordings")
        try:
            schema = ActionSchema.from_dict(body.get("schema"))
        except ActionError as e:
            raise P.ProtocolError("BAD_REQUEST", f"schema: {e}") from None
        rate = body.get("tick_rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and 0 < rate <= 1000):
            raise P.ProtocolError("BAD_REQUEST", f"tick_rate must be a number in (0, 1000] ticks/s, got {rate!r:.40}")
        fields = body.get("fields", [])
        if (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)
                or not set(fields) <= set(STEP_FIELDS) or len(set(fields)) != len(fields)):
            raise P.ProtocolError("BAD_REQUEST", f"fields must be a list of distinct names from {list(STEP_FIELDS)}")
        self._n += 1
        rec = _Rec(f"r{self._n}", token, schema, _meta(body.get("meta")), float(rate), _audio_spec(body.get("audio")),
                   tuple(f for f in STEP_FIELDS if f in fields))
        step_bytes = self.cfg.resolution ** 2 * 3 + schema.num_buttons + 4 * schema.num_axes + 64
        if rec.audio is not None:
            step_bytes += 2 * rec.audio["samples_per_step"] * rec.audio["channels"]
        rec.episode_steps = max(1, min(self.cfg.episode_steps, (self.cfg.episode_mb << 20) // step_bytes))
        self.recs[rec.id] = rec
        self._new_episode(rec)
        return {"rec": rec.id, "episode": rec.writer.path.name, "resolution": [self.cfg.resolution] * 2,
                "episode_steps": rec.episode_steps}

    def step(self, token: str, rec_id: Any, rid: int | None, body: dict) -> dict[str, Any]:
        rec = self._rec(token, rec_id)
        if rec.last is not None and rid is not None and rec.last[0] == rid:
            return rec.last[1]  # a retried request: same answer, the step is not written twice
        frame = self._frame(P.decode_array(body.get("frame"), "frame"))
        action = rec.schema.parse(body.get("action"))  # named or array form (PROTOCOL.md, Actions)
        audio = None
        if rec.audio is not None:
            audio = P.decode_array(body.get("audio"), "audio")
            want = (rec.audio["samples_per_step"], rec.audio["channels"])
            if audio.dtype != np.int16 or audio.shape != want:
                raise P.ProtocolError("BAD_REQUEST", f"audio must be int16 {want} (samples, channels) as declared, "
                                                     f"got {audio.dtype} {audio.shape}")
        elif body.get("audio") is not None:
            raise P.ProtocolError("BAD_REQUEST", "this recording declared no audio (REC_OPEN audio: nil)")
        extra = {k: body.get(k) for k in STEP_FIELDS}
        undeclared = [k for k in STEP_FIELDS if k not in rec.fields and extra[k] is not None]
        missing = [k for k in rec.fields if extra[k] is None]
        if undeclared or missing:
            raise P.ProtocolError("BAD_REQUEST", f"this recording declared fields {list(rec.fields)}: "
                                                 f"missing {missing}, undeclared {undeclared}")
        pose = reward = terminated = None
        if "pose" in rec.fields:
            pose = np.asarray(P.decode_array(extra["pose"], "pose"), np.float32).reshape(-1)
            if pose.shape != (5,) or not np.isfinite(pose).all():
                raise P.ProtocolError("BAD_REQUEST", "pose must be 5 finite numbers: x, y, z, yaw, pitch")
        if "reward" in rec.fields:
            reward = extra["reward"]
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
                raise P.ProtocolError("BAD_REQUEST", "reward must be a finite number")
        if "terminated" in rec.fields:
            terminated = extra["terminated"]
            if not isinstance(terminated, bool):
                raise P.ProtocolError("BAD_REQUEST", "terminated must be true or false")
        rec.writer.append(frame, action.buttons, action.axes, audio, pose=pose, reward=reward, terminated=terminated)
        rec.steps += 1
        reply = {"rec": rec.id, "steps": rec.steps, "episode": rec.writer.path.name}
        rec.last = (rid, reply) if rid is not None else None  # before the roll-over: a retry must not append twice
        if len(rec.writer) >= rec.episode_steps:
            self._finish(rec, "length")
            self._new_episode(rec)
        return reply

    def close(self, token: str, rec_id: Any, ended_by: Any = None) -> dict[str, Any]:
        rec = self._rec(token, rec_id)
        if ended_by is not None and not (isinstance(ended_by, str) and 0 < len(ended_by) <= 64):
            raise P.ProtocolError("BAD_REQUEST", "ended_by must be a short string (e.g. \"terminated\", \"quit\")")
        self._finish(rec, ended_by or "client")
        del self.recs[rec.id]
        return {"rec": rec.id, "steps": rec.steps, "episodes": rec.episodes, "out": str(self.out)}

    def close_client(self, token: str, ended_by: str) -> None:
        """Write the open episodes of a client that went away."""
        for rec in [r for r in self.recs.values() if r.token == token]:
            self._finish(rec, ended_by)
            del self.recs[rec.id]

    def close_all(self, ended_by: str) -> None:
        for token in {r.token for r in self.recs.values()}:
            self.close_client(token, ended_by)

    def open_for(self, token: str) -> list[str]:
        return sorted(r.id for r in self.recs.values() if r.token == token)

    # ---- helpers ----------------------------------------------------------------------
    def _rec(self, token: str, rec_id: Any) -> _Rec:
        rec = self.recs.get(rec_id) if isinstance(rec_id, str) else None
        if rec is None or rec.token != token:
            raise P.ProtocolError("UNKNOWN_SESSION", f"no open recording {rec_id!r} for this client")
        return rec

    def _frame(self, f: np.ndarray) -> np.ndarray:
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or min(f.shape[:2]) < 1:
            raise P.ProtocolError("BAD_REQUEST", f"frame must be a uint8 (H, W, 3) RGB image, got {f.dtype} {f.shape}")
        r = self.cfg.resolution
        return f if f.shape[:2] == (r, r) else cv2.resize(f, (r, r), interpolation=cv2.INTER_AREA)

    def _new_episode(self, rec: _Rec) -> None:
        path = self.out / f"ep_{max(next_episode_index(self.out), self._next_free()):06d}"
        meta = {"source": "bridge", **rec.meta, "tick_rate": rec.tick_rate, "recording": rec.id,
                "part": len(rec.episodes)}
        rec.writer = EpisodeWriter(path, rec.schema, meta, (self.cfg.resolution,) * 2, rec.audio)

    def _next_free(self) -> int:
        """Past every episode an open recording will write (they are on disk only once closed)."""
        taken = [int(r.writer.path.name[3:]) for r in self.recs.values() if r.writer is not None]
        return max(taken, default=-1) + 1

    def _finish(self, rec: _Rec, ended_by: str) -> None:
        path = rec.writer.close_partial({"ended_by": ended_by}) if rec.writer is not None else None
        if path is not None:
            rec.episodes.append(path.name)
            self.written.append(str(path))
        rec.writer = None

