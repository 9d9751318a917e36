"""Python client for the worldsim bridge (PROTOCOL.md): lockstep and realtime sessions,
timeouts and Lazy-Pirate reconnects, numpy frames and audio out.

    with BridgeClient("tcp://127.0.0.1:5555") as c:
        sid = c.open(mode="lockstep", seed=1)
        obs = c.step(sid, {"keys": ["forward"]})      # obs.frame (H, W, 3) uint8, obs.audio (S, C) int16

        rt = c.open(mode="realtime", credit=2)
        c.act(rt, {"keys": ["turn_left"]})             # latest wins, held until replaced
        obs = c.recv_obs(timeout_ms=500)                # the newest frame; returns one credit

    with BridgeClient("tcp://127.0.0.1:5560") as c:     # `worldsim record bridge --out data/mygame`
        with c.recording({"buttons": ["jump", "fire"], "axes": ["steer"]}, tick_rate=30.0,
                         audio={"sample_rate": 22050, "channels": 2, "samples_per_step": 735}) as rec:
            rec.step(frame, {"keys": ["jump"], "axes": {"steer": 0.5}}, audio=samples)  # once per tick
        rec.result                                          # → the episodes written (closed on leaving)
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from engine_bridge import protocol as P


class BridgeError(RuntimeError):
    """An ERROR reply (``code``, ``retryable``) or a server that stopped answering."""

    def __init__(self, code: str, message: str, retryable: bool = False):
        super().__init__(f"{code}: {message}")
        self.code, self.retryable = code, retryable


def _raise_error(msg: dict, prefix: str = "") -> None:
    b = msg.get("body") or {}
    raise BridgeError(b.get("code", "INTERNAL"), prefix + str(b.get("message", "")), bool(b.get("retryable")))


@dataclass
class Obs:
    sid: str
    tick: int
    frame: np.ndarray
    audio: np.ndarray | None
    dropped: int = 0
    timings: dict = field(default_factory=dict)


class BridgeClient:
    def __init__(self, addr: str = "tcp://127.0.0.1:5555", timeout_ms: int = 5000, retries: int = 3,
                 name: str = "worldsim-python", capabilities: tuple[str, ...] = P.CAPABILITIES,
                 curve: dict[str, bytes] | None = None, connect: bool = True):
        """``curve``: ``{"server_public", "public", "secret"}`` keys (z85 bytes) for a CURVE server."""
        self.addr, self.timeout_ms, self.retries = addr, timeout_ms, retries
        self.name, self.capabilities, self.curve = name, list(capabilities), curve
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.token: str | None = None
        self.welcome: dict[str, Any] = {}
        self._rid = itertools.count(1)
        self._obs: deque[dict] = deque()
        self.auto_credit = True
        if connect:
            self.connect()

    # ---- connection ----------------------------------------------------------------
    def _socket(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.curve:
            s.curve_serverkey = self.curve["server_public"]
            s.curve_publickey = self.curve["public"]
            s.curve_secretkey = self.curve["secret"]
        s.connect(self.addr)
        self.sock = s

    def connect(self) -> dict[str, Any]:
        """HELLO (resuming our sessions if we had a token) → the WELCOME body."""
        self._socket()
        body: dict[str, Any] = {"client": self.name, "capabilities": self.capabilities}
        if self.token:
            body["resume"] = self.token
        self.welcome = self._roundtrip(P.HELLO, body, None, reconnect=False).get("body", {})
        self.token = self.welcome["token"]
        return self.welcome

    @property
    def world(self) -> dict[str, Any]:
        """The served world's description from WELCOME; a recording-only server has none."""
        w = self.welcome.get("world")
        if not w:
            raise BridgeError("NO_WORLD", f"{self.addr} serves no world (a `worldsim record bridge` server records "
                                          "engines' gameplay); connect to a `worldsim serve` endpoint to play")
        return w

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- request/reply with Lazy Pirate -----------------------------------------------
    def _send(self, type_: str, body: dict | None = None, sid: str | None = None, rid: int | None = None) -> int:
        rid = rid if rid is not None else next(self._rid)
        self.sock.send(P.pack(P.envelope(type_, body, rid, sid)))
        return rid

    def _recv(self, timeout_ms: int) -> dict | None:
        if self.sock.poll(timeout_ms, zmq.POLLIN):
            return P.unpack(self.sock.recv(), max_bytes=1 << 26)
        return None

    def _roundtrip(self, type_: str, body: dict | None, sid: str | None, reconnect: bool = True,
                   rid: int | None = None) -> dict[str, Any]:
        rid = next(self._rid) if rid is None else rid
        attempts = self.retries + 1 if reconnect else 1
        for attempt in range(attempts):
            self._send(type_, body, sid, rid)
            deadline = time.monotonic() + self.timeout_ms / 1e3
            while True:
                left = int((deadline - time.monotonic()) * 1e3)
                msg = self._recv(max(left, 0)) if left > 0 else None
                if msg is None:
                    break
                if msg.get("rid") != rid:
                    if msg.get("type") == P.OBS:
                        self._obs.append(msg)  # a realtime frame arriving meanwhile
                    continue
                if msg.get("type") == P.ERROR:
                    _raise_error(msg)
                return msg
            if attempt + 1 < attempts:  # Lazy Pirate: new socket, resume, same request id
                time.sleep(min(0.1 * 2 ** attempt, 1.0))
                try:
                    self.connect()
                except BridgeError:
                    continue
        raise BridgeError("TIMEOUT", f"no reply to {type_} from {self.addr} after {attempts} attempt(s)", True)

    def request(self, type_: str, body: dict | None = None, sid: str | None = None) -> dict[str, Any]:
        return self._roundtrip(type_, body, sid).get("body", {})

    # ---- API ---------------------------------------------------------------------------
    def open(self, mode: str = "lockstep", seed: int = 0, start: np.ndarray | None = None, credit: int = 2,
             action: dict | None = None) -> str:
        body: dict[str, Any] = {"mode": mode, "seed": seed, "credit": credit}
        if start is not None:
            body["start"] = P.encode_array(np.asarray(start, np.uint8))
        if action is not None:
            body["action"] = action
        return self.request(P.OPEN, body)["sid"]

    @staticmethod
    def _to_obs(msg: dict) -> Obs:
        b = msg["body"]
        audio = None if b.get("audio") is None else P.decode_array(b["audio"], "audio")
        return Obs(msg["sid"], b["tick"], P.decode_array(b["frame"], "frame"), audio, b.get("dropped", 0), b.get("timings", {}))

    def step(self, sid: str, action: dict | None = None) -> Obs:
        return self._to_obs(self._roundtrip(P.STEP, {"action": action or {}}, sid))

    def step_many(self, actions: dict[str, dict | None]) -> dict[str, Obs]:
        """One lockstep STEP per session, all sent before any reply is awaited, so the server
        runs them as one batched forward (NPC crowds, cutscenes)."""
        want: dict[int, str] = {self._send(P.STEP, {"action": a or {}}, sid): sid for sid, a in actions.items()}
        got: dict[str, Obs] = {}
        deadline = time.monotonic() + self.timeout_ms / 1e3
        while want:
            left = int((deadline - time.monotonic()) * 1e3)
            msg = self._recv(left) if left > 0 else None
            if msg is None:
                break
            if msg.get("rid") not in want:
                if msg.get("type") == P.OBS:
                    self._obs.append(msg)
                continue
            sid = want.pop(msg["rid"])
            if msg.get("type") == P.ERROR:
                _raise_error(msg, f"{sid}: ")
            got[sid] = self._to_obs(msg)
        # replies lost: retry each with its own request id; the server replays a repeated
        # STEP's reply instead of stepping twice
        for rid, sid in want.items():
            got[sid] = self._to_obs(self._roundtrip(P.STEP, {"action": actions[sid] or {}}, sid, rid=rid))
        return got

    def act(self, sid: str, action: dict | None) -> None:
        self._send(P.ACT, {"action": action or {}}, sid)

    def credit(self, sid: str, n: int = 1) -> None:
        self._send(P.CREDIT, {"n": n}, sid)

    def recv_obs(self, timeout_ms: int = 1000) -> Obs | None:
        """The next realtime frame (returning one credit for it unless ``auto_credit`` is off)."""
        if not self._obs:
            deadline = time.monotonic() + timeout_ms / 1e3
            while not self._obs:
                left = int((deadline - time.monotonic()) * 1e3)
                if left <= 0:
                    return None
                msg = self._recv(left)
                if msg is None:
                    return None
                if msg.get("type") == P.OBS:
                    self._obs.append(msg)
                elif msg.get("type") == P.ERROR:
                    _raise_error(msg)
        msg = self._obs.popleft()
        if self.auto_credit:
            self.credit(msg["sid"], 1)
        return self._to_obs(msg)

    def snapshot(self, sid: str) -> str:
        return self.request(P.SNAPSHOT, {}, sid)["snapshot"]

    def restore(self, snapshot: str, mode: str = "lockstep", credit: int = 2) -> str:
        return self.request(P.RESTORE, {"snapshot": snapshot, "mode": mode, "credit": credit})["sid"]

    def save(self, sid: str, name: str) -> dict[str, Any]:
        """Keep session ``sid`` on the server's disk as ``name`` (capability "save"): ``{name, tick, bytes}``."""
        return self.request(P.SAVE, {"name": name}, sid)

    def load(self, name: str, mode: str = "lockstep", credit: int = 2, seed: int | None = None) -> str:
        """A new session continuing the save ``name`` (``seed``: new random draws from there)."""
        body: dict[str, Any] = {"name": name, "mode": mode, "credit": credit}
        if seed is not None:
            body["seed"] = seed
        return self.request(P.LOAD, body)["sid"]

    def saves(self) -> list[dict[str, Any]]:
        """The server's saves by name: ``{name, tick, seed, views, bytes, saved}`` each (``saved``:
        ISO 8601 UTC), with ``error`` saying why when this world cannot load one."""
        return self.request(P.SAVES, {})["saves"]

    def delete_save(self, name: str) -> None:
        """Remove the save ``name`` from the server's disk."""
        self.request(P.DELETE_SAVE, {"name": name})

    def fork(self, sid: str, mode: str | None = None, credit: int = 2) -> str:
        body: dict[str, Any] = {"credit": credit}
        if mode:
            body["mode"] = mode
        return self.request(P.FORK, body, sid)["sid"]

    def close_session(self, sid: str) -> None:
        self.request(P.CLOSE, {}, sid)

    def ping(self) -> dict[str, Any]:
        return self.request(P.PING)

    # ---- recording an engine's gameplay (a `worldsim record bridge` server) -------------
    def record_open(self, schema: dict, tick_rate: float, audio: dict | None = None, fields: tuple[str, ...] = (),
                    meta: dict | None = None) -> str:
        """Start a recording: the engine's action ``schema`` ({buttons, axes, groups?, axis_low?,
        axis_high?, units?}), ticks per second, ``audio`` {sample_rate, channels, samples_per_step}
        or None, the optional per-tick ``fields`` it will send (pose, reward, terminated) and extra
        episode ``meta`` (e.g. {"map": "level3"}). Returns the recording id."""
        body = {"schema": schema, "tick_rate": tick_rate, "audio": audio, "fields": list(fields), "meta": meta or {}}
        return self.request(P.REC_OPEN, body)["rec"]

    def record_step(self, rec: str, frame: np.ndarray, action: dict | None = None, audio: np.ndarray | None = None,
                    pose: np.ndarray | None = None, reward: float | None = None,
                    terminated: bool | None = None) -> dict[str, Any]:
        """One tick: the frame the player saw (uint8 (H, W, 3)), the action taken on it, that
        tick's sound (int16 (S, C)) and the declared fields. A retry after a lost reply is
        written once. Returns {rec, steps, episode}."""
        body: dict[str, Any] = {"frame": P.encode_array(np.asarray(frame, np.uint8)), "action": action or {}}
        if audio is not None:
            body["audio"] = P.encode_array(np.asarray(audio, np.int16))
        if pose is not None:
            body["pose"] = P.encode_array(np.asarray(pose, np.float32))
        if reward is not None:
            body["reward"] = float(reward)
        if terminated is not None:
            body["terminated"] = bool(terminated)
        return self.request(P.REC_STEP, body, rec)

    def record_close(self, rec: str, ended_by: str | None = None) -> dict[str, Any]:
        """Write the recording's last episode; returns {rec, steps, episodes, out}."""
        return self.request(P.REC_CLOSE, {"ended_by": ended_by} if ended_by else {}, rec)

    def recording(self, schema: dict, tick_rate: float, **kw: Any) -> "Recording":
        """:meth:`record_open` as a context manager: ``with c.recording(...) as r: r.step(frame,
        action)``; it closes on leaving (``ended_by`` "error" when an exception leaves it)."""
        return Recording(self, self.record_open(schema, tick_rate, **kw))


class Recording:
    """An open recording on a `worldsim record bridge` server (see :meth:`BridgeClient.recording`)."""

    def __init__(self, client: BridgeClient, rec: str):
        self.client, self.rec = client, rec
        self.result: dict[str, Any] | None = None  # REC_CLOSE's answer, once closed

    def step(self, frame: np.ndarray, action: dict | None = None, **fields: Any) -> dict[str, Any]:
        return self.client.record_step(self.rec, frame, action, **fields)

    def close(self, ended_by: str | None = None) -> dict[str, Any]:
        if self.result is None:
            self.result = self.client.record_close(self.rec, ended_by)
        return self.result

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            self.close("error" if exc_type is not None else None)
        except BridgeError:
            if exc_type is None:  # do not hide the exception that is already leaving
                raise
