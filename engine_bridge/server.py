"""`worldsim serve`: the ZeroMQ ROUTER server that streams worlds to engines (PROTOCOL.md).
Without a world and with a :class:`Recorder` it is `worldsim record bridge`: engines record
their own gameplay through it (engine_bridge/recording.py).

One thread owns the socket and the world: it drains incoming messages, answers control
requests at once, and runs every pending lockstep STEP plus every due realtime session as
one batched :meth:`World.step_many`. A client's mistake costs that client an ERROR reply,
never the server: every message is decoded under hard limits and handled inside its own
try/except.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from engine_bridge import protocol as P
from engine_bridge.recording import Recorder
from engine_bridge.saves import SaveDir
from engine_bridge.security import setup_curve
from worldsim import __version__
from worldsim.actions import Action, ActionError
from worldsim.runtime.clock import StepGovernor, freeze_heap
from worldsim.runtime.session import Session, World

log = logging.getLogger("worldsim.bridge")


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_sessions: int = 64
    max_message_bytes: int = P.MAX_MESSAGE_BYTES
    heartbeat_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    resume_ttl_ms: int = 30000
    max_credit: int = 8
    max_snapshots: int = 32
    curve_keys: str | None = None   # directory from `worldsim keys`: enables CURVE + ZAP allow-list
    save_dir: str | None = None     # where SAVE writes sessions (capability "save"; None: not offered)
    max_saves: int = 256            # files SAVE may keep there (overwriting a name is always allowed)


@dataclass
class _Client:
    token: str
    identity: bytes
    last_seen: float
    capabilities: list[str]
    sessions: set[str] = field(default_factory=set)
    snapshots: OrderedDict = field(default_factory=OrderedDict)
    detached: bool = False


@dataclass
class _Sess:
    sid: str
    token: str
    session: Session
    mode: str
    credit: int = 0
    action: Action | None = None
    pending: dict | None = None        # newest undelivered realtime OBS
    dropped: int = 0
    last_step: tuple[int, dict] | None = None  # (rid, reply) of the last lockstep STEP, for retried requests


class BridgeServer:
    def __init__(self, world: World | None, cfg: ServerConfig | None = None, recorder: Recorder | None = None):
        if world is None and recorder is None:
            raise ValueError("a bridge server needs a world to serve, a recorder to record into, or both")
        self.world, self.recorder = world, recorder
        # capabilities this server offers: a world's sessions, recording, and resuming either
        self.cfg = cfg or ServerConfig()
        self.offered = [c for c in P.CAPABILITIES if (world is not None and c in P.WORLD_CAPABILITIES)
                        or (recorder is not None and c == "record") or c == "resume"
                        or (world is not None and c == "save" and self.cfg.save_dir is not None)]
        self.clients: dict[str, _Client] = {}
        self.by_identity: dict[bytes, str] = {}
        self.sessions: dict[str, _Sess] = {}
        self.snapshots_owner: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._lockstep: list[tuple[_Sess, int | None, Action]] = []
        self.stats = {"messages": 0, "errors_sent": 0, "bad_requests": 0, "ticks": 0, "frames_sent": 0,
                      "frames_dropped": 0, "internal_errors": 0, "send_failures": 0, "degraded_ticks": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done = threading.Event()  # set when the loop has ended and its clean-up has run
        self.error: BaseException | None = None
        self.period = 1.0 / world.tick_rate if world is not None else 0.05
        self.governor = StepGovernor.for_world(world, self.period) if world is not None else None
        self.endpoint: str | None = None
        self.saves = SaveDir(self.cfg.save_dir, self.cfg.max_saves) if "save" in self.offered else None

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> "BridgeServer":
        self._thread = threading.Thread(target=self._main, name="worldsim-bridge", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("bridge server did not start")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop and wait for its clean-up (open recordings written). Waits on an event,
        not on ``Thread.join`` alone: a join interrupted by Ctrl-C can leave the thread looking
        finished while it still runs, and the process would exit under it."""
        self._stop.set()
        if self._thread is not None:
            self._done.wait(timeout)
            self._thread.join(timeout=1)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or ``timeout`` seconds pass (False)."""
        return self._done.wait(timeout)

    def serve_forever(self) -> None:
        self._main()

    def _event(self, event: str, **fields: Any) -> None:
        log.info(json.dumps({"event": event, **fields}, default=str))

    def _main(self) -> None:
        ctx = zmq.Context()
        auth = None
        try:
            sock = ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
            sock.setsockopt(zmq.SNDHWM, 64)
            sock.setsockopt(zmq.LINGER, 0)
            if self.cfg.curve_keys:
                auth = setup_curve(ctx, sock, Path(self.cfg.curve_keys))
            sock.bind(self.cfg.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sock = sock
            self._event("listening", endpoint=self.endpoint, world=self.world.name if self.world else None,
                        record=str(self.recorder.out) if self.recorder else None, curve=bool(auth))
        except BaseException as e:
            self.error = e
            self._ready.set()
            self._done.set()
            ctx.destroy(linger=0)
            return
        freeze_heap()  # the world is loaded: a full collection later would stall a tick (see freeze_heap)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_rt = time.perf_counter() + self.period
        last_live = 0.0
        try:
            while not self._stop.is_set():
                now = time.perf_counter()
                wait_ms = max(0.0, (next_rt - now) * 1e3) if self._realtime_active() else 50.0
                if self._lockstep:
                    wait_ms = 0.0
                if poller.poll(min(wait_ms, 50.0)):
                    for _ in range(1000):  # drain, but never starve the clock
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(frames)
                now = time.perf_counter()
                rt_due = self._realtime_active() and now >= next_rt
                if rt_due:
                    behind = int((now - next_rt) / self.period)
                    next_rt += (behind + 1) * self.period
                elif not self._realtime_active():
                    next_rt = now + self.period
                if self._lockstep or rt_due:
                    self._tick(rt_due)
                if now - last_live > 0.2:
                    self._liveness(time.monotonic())
                    last_live = now
        finally:
            try:
                if self.recorder is not None:  # what engines sent so far is written, not lost
                    try:
                        self.recorder.close_all("server_stopped")
                    except Exception as e:  # e.g. a full disk: say so, and still release the socket
                        self._event("record_error", error=repr(e))
                if auth is not None:
                    auth.stop()
                sock.close(0)
                ctx.term()
            finally:
                self._done.set()

    # ---- sending ----------------------------------------------------------------------
    def _send(self, identity: bytes, msg: dict) -> bool:
        try:
            self.sock.send_multipart([identity, P.pack(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # peer gone (ROUTER_MANDATORY) or its queue full: never block the clock
            self.stats["send_failures"] += 1
            return False

    def _send_error(self, identity: bytes, code: str, message: str, rid: Any = None, sid: Any = None) -> None:
        self.stats["errors_sent"] += 1
        if code == "BAD_REQUEST":
            self.stats["bad_requests"] += 1
        self._send(identity, P.error(code, message, rid, sid))

    # ---- receiving --------------------------------------------------------------------
    def _on_message(self, frames: list[bytes]) -> None:
        self.stats["messages"] += 1
        identity = frames[0]
        rid = sid = None
        try:
            if len(frames) != 2:
                raise P.ProtocolError("BAD_REQUEST", "send exactly one frame per message (no multipart)")
            msg = P.unpack(frames[1], self.cfg.max_message_bytes)
            rid, sid = msg.get("rid"), msg.get("sid")
            t, rid, sid, body = P.check_envelope(msg)
            if t == P.HELLO:
                return self._hello(identity, msg["v"], rid, body)
            token = self.by_identity.get(identity)
            client = self.clients.get(token) if token else None
            if client is None:
                raise P.ProtocolError("NOT_READY", "send HELLO first")
            client.last_seen = time.monotonic()
            if client.detached:
                client.detached = False
            getattr(self, "_on_" + t.lower())(client, rid, sid, body)
        except P.ProtocolError as e:
            self._send_error(identity, e.code, str(e), rid, sid)
        except ActionError as e:
            self._send_error(identity, "INVALID_ACTION", str(e), rid, sid)
        except Exception as e:  # a bug must not take the server down
            self.stats["internal_errors"] += 1
            self._event("internal_error", error=repr(e))
            self._send_error(identity, "INTERNAL", f"{type(e).__name__}: {e}", rid, sid)

    def _hello(self, identity: bytes, v: list, rid: int | None, body: dict) -> None:
        if v[0] != P.PROTOCOL_VERSION[0]:
            raise P.ProtocolError("VERSION_MISMATCH", f"server speaks protocol {P.PROTOCOL_VERSION[0]}."
                                  f"{P.PROTOCOL_VERSION[1]}, client {v[0]}.{v[1]}: major versions differ")
        caps = body.get("capabilities", list(P.CAPABILITIES))
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise P.ProtocolError("BAD_REQUEST", "'capabilities' must be a list of strings")
        common = [c for c in self.offered if c in caps]
        resume = body.get("resume")
        resumed = False
        client = None
        if resume is not None:
            if not isinstance(resume, str):
                raise P.ProtocolError("BAD_REQUEST", "'resume' must be the token string from WELCOME")
            client = self.clients.get(resume)
            resumed = client is not None
        if client is None:
            client = _Client(token=f"c{next(self._ids)}-{np.random.randint(1 << 30):08x}", identity=identity,
                             last_seen=time.monotonic(), capabilities=common)
            self.clients[client.token] = client
        old = client.identity
        if old != identity:
            self.by_identity.pop(old, None)
        client.identity, client.last_seen, client.detached, client.capabilities = identity, time.monotonic(), False, common
        self.by_identity[identity] = client.token
        w = self.world
        world = None  # a recording-only server has no world to describe
        if w is not None:
            info = w.model.info()
            world = {k: info.get(k) for k in ("name", "wad", "maps", "tick_rate", "resolution", "audio")}
        self._event("hello", client=body.get("client"), token=client.token, resumed=resumed)
        limits = {"max_sessions": self.cfg.max_sessions, "max_message_bytes": self.cfg.max_message_bytes,
                  "heartbeat_ms": self.cfg.heartbeat_ms, "heartbeat_timeout_ms": self.cfg.heartbeat_timeout_ms,
                  "resume_ttl_ms": self.cfg.resume_ttl_ms, "max_credit": self.cfg.max_credit}
        record = None
        if self.recorder is not None:
            rc = self.recorder.cfg
            record = {"resolution": [rc.resolution] * 2, "episode_steps": rc.episode_steps, "max_open": rc.max_open,
                      "open": self.recorder.open_for(client.token)}
        self._send(identity, P.envelope(P.WELCOME, {
            "server": f"worldsim {__version__}", "protocol": list(P.PROTOCOL_VERSION), "token": client.token,
            "capabilities": common, "world": world, "schema": w.schema.to_dict() if w is not None else None,
            "resumed": resumed,
            "sessions": sorted(client.sessions), "record": record, "limits": limits}, rid))

    # ---- requests ---------------------------------------------------------------------
    def _sess(self, client: _Client, sid: Any, body: dict) -> _Sess:
        sid = sid if sid is not None else body.get("sid")
        s = self.sessions.get(sid) if isinstance(sid, str) else None
        if s is None or s.token != client.token:
            raise P.ProtocolError("UNKNOWN_SESSION", f"no session {sid!r} for this client")
        return s

    def _mode(self, client: _Client, body: dict) -> tuple[str, int]:
        mode = body.get("mode", "lockstep")
        if mode not in ("lockstep", "realtime"):
            raise P.ProtocolError("BAD_REQUEST", f"mode must be 'lockstep' or 'realtime', got {mode!r}")
        if mode not in client.capabilities:
            raise P.ProtocolError("BAD_REQUEST", f"mode {mode!r} was not negotiated in HELLO")
        credit = body.get("credit", 2)
        if not isinstance(credit, int) or isinstance(credit, bool) or not 0 <= credit <= self.cfg.max_credit:
            raise P.ProtocolError("BAD_REQUEST", f"credit must be an integer 0..{self.cfg.max_credit}")
        return mode, credit

    def _add(self, client: _Client, session: Session, mode: str, credit: int, action: Action | None = None) -> _Sess:
        sid = f"s{next(self._ids)}"
        s = _Sess(sid, client.token, session, mode, credit=credit, action=action)
        self.sessions[sid] = s
        client.sessions.add(sid)
        return s

    @staticmethod
    def _seed(body: dict, default: int | None) -> int | None:
        seed = body.get("seed", default)
        if seed is None and default is None:
            return None
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise P.ProtocolError("BAD_REQUEST", f"seed must be an integer 0..2^63-1, got {seed!r}")
        return seed

    def _capacity(self) -> None:
        if len(self.sessions) >= self.cfg.max_sessions:
            raise P.ProtocolError("CAPACITY", f"server holds its maximum of {self.cfg.max_sessions} sessions")

    def _on_open(self, client, rid, sid, body):
        if self.world is None:
            raise P.ProtocolError("BAD_REQUEST", "this server only records (worldsim record bridge): it has no world "
                                                 "to open; REC_OPEN starts a recording")
        mode, credit = self._mode(client, body)
        seed = self._seed(body, 0)
        start = body.get("start")
        if start is not None:
            start = np.array(P.decode_array(start, "start"))
            H, W = self.world.resolution
            if start.shape != (H, W, 3) or start.dtype != np.uint8:
                raise P.ProtocolError("BAD_REQUEST", f"start must be a ({H}, {W}, 3) uint8 image")
        action = self.world.action(body["action"]) if body.get("action") is not None else None
        self._capacity()
        s = self._add(client, self.world.open(seed=seed, start=start), mode, credit, action)
        self._event("open", sid=s.sid, mode=mode, token=client.token)
        self._send(client.identity, P.envelope(P.OK, {"sid": s.sid, "tick": 0}, rid, s.sid))

    def _on_step(self, client, rid, sid, body):
        s = self._sess(client, sid, body)
        if s.mode != "lockstep":
            raise P.ProtocolError("BAD_REQUEST", "STEP is for lockstep sessions; send ACT to a realtime session")
        if s.last_step is not None and rid is not None and s.last_step[0] == rid:
            self._send(client.identity, s.last_step[1])  # a retried request: same answer, no second tick
            return
        self._lockstep.append((s, rid, self.world.action(body.get("action"))))

    def _on_act(self, client, rid, sid, body):
        s = self._sess(client, sid, body)
        if s.mode != "realtime":
            raise P.ProtocolError("BAD_REQUEST", "ACT is for realtime sessions; send STEP to a lockstep session")
        s.action = self.world.action(body.get("action"))

    def _on_credit(self, client, rid, sid, body):
        s = self._sess(client, sid, body)
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise P.ProtocolError("BAD_REQUEST", "CREDIT needs n ≥ 1")
        s.credit = min(self.cfg.max_credit, s.credit + n)
        if s.pending is not None and s.credit > 0:
            if self._send(client.identity, s.pending):
                s.credit -= 1
                self.stats["frames_sent"] += 1
            s.pending = None

    def _on_snapshot(self, client, rid, sid, body):
        s = self._sess(client, sid, body)
        snap = s.session.snapshot()
        pid = f"p{next(self._ids)}"
        client.snapshots[pid] = snap
        while len(client.snapshots) > self.cfg.max_snapshots:
            client.snapshots.popitem(last=False)
        self._send(client.identity, P.envelope(P.OK, {"snapshot": pid, "tick": snap.tick}, rid, s.sid))

    def _on_restore(self, client, rid, sid, body):
        pid = body.get("snapshot")
        snap = client.snapshots.get(pid) if isinstance(pid, str) else None
        if snap is None:
            raise P.ProtocolError("UNKNOWN_SNAPSHOT", f"no snapshot {pid!r} for this client")
        mode, credit = self._mode(client, body)
        self._capacity()
        s = self._add(client, self.world.restore(snap), mode, credit)
        self._send(client.identity, P.envelope(P.OK, {"sid": s.sid, "tick": snap.tick}, rid, s.sid))

    def _on_fork(self, client, rid, sid, body):
        src = self._sess(client, sid, body)
        mode, credit = self._mode(client, {"mode": src.mode, **body})
        self._capacity()
        s = self._add(client, src.session.fork(), mode, credit, src.action)
        self._send(client.identity, P.envelope(P.OK, {"sid": s.sid, "tick": s.session.tick}, rid, s.sid))

    # ---- sessions on the server's disk (capability "save", engine_bridge/saves.py) --------
    def _saves(self, client: _Client) -> SaveDir:
        if self.saves is None or "save" not in client.capabilities:
            raise P.ProtocolError("BAD_REQUEST", "this server keeps no saves (start it with `worldsim serve --save-dir "
                                                 "DIR`), or 'save' was not negotiated in HELLO")
        return self.saves

    def _on_save(self, client, rid, sid, body):
        s = self._sess(client, sid, body)
        reply = self._saves(client).save(s.session, body.get("name"))
        self._send(client.identity, P.envelope(P.OK, reply, rid, s.sid))

    def _on_load(self, client, rid, sid, body):
        saves = self._saves(client)
        path = saves.check_loadable(body.get("name"))
        seed = self._seed(body, None)
        mode, credit = self._mode(client, body)
        self._capacity()
        s = self._add(client, saves.load(self.world, path, seed), mode, credit)
        self._send(client.identity, P.envelope(P.OK, {"sid": s.sid, "tick": s.session.tick}, rid, s.sid))

    def _on_saves(self, client, rid, sid, body):
        self._send(client.identity, P.envelope(P.OK, {"saves": self._saves(client).listing(self.world)}, rid, sid))

    def _on_delete_save(self, client, rid, sid, body):
        self._saves(client).delete(body.get("name"))
        self._send(client.identity, P.envelope(P.OK, {"name": body["name"]}, rid, sid))

    def _on_close(self, client, rid, sid, body):
        s = self._sess(client, sid, body)
        self._free(s)
        self._send(client.identity, P.envelope(P.OK, {}, rid, s.sid))

    # ---- recording (capability "record", engine_bridge/recording.py) --------------------
    def _recorder(self, client: _Client) -> Recorder:
        if self.recorder is None:
            raise P.ProtocolError("BAD_REQUEST", "this server does not record; run `worldsim record bridge --out DIR` "
                                                 "for one that does")
        if "record" not in client.capabilities:
            raise P.ProtocolError("BAD_REQUEST", "capability 'record' was not negotiated in HELLO")
        return self.recorder

    def _on_rec_open(self, client, rid, sid, body):
        reply = self._recorder(client).open(client.token, body)
        self._event("rec_open", rec=reply["rec"], episode=reply["episode"], token=client.token)
        self._send(client.identity, P.envelope(P.OK, reply, rid, reply["rec"]))

    def _on_rec_step(self, client, rid, sid, body):
        reply = self._recorder(client).step(client.token, sid if sid is not None else body.get("rec"), rid, body)
        self._send(client.identity, P.envelope(P.OK, reply, rid, reply["rec"]))

    def _on_rec_close(self, client, rid, sid, body):
        reply = self._recorder(client).close(client.token, sid if sid is not None else body.get("rec"),
                                             body.get("ended_by"))
        self._event("rec_close", rec=reply["rec"], steps=reply["steps"], episodes=reply["episodes"], token=client.token)
        self._send(client.identity, P.envelope(P.OK, reply, rid, reply["rec"]))

    def _on_ping(self, client, rid, sid, body):
        self._send(client.identity, P.envelope(P.PONG, {"server_time_ms": int(time.time() * 1e3),
                                                          "stats": dict(self.stats)}, rid))

    # ---- ticking ----------------------------------------------------------------------
    def _realtime_active(self) -> bool:
        return any(s.mode == "realtime" and not self.clients[s.token].detached for s in self.sessions.values())

    def _tick(self, realtime: bool) -> None:
        lockstep: dict[Session, Action | None] = {}
        replies: dict[Session, tuple[_Sess, int | None]] = {}
        rest = []
        for s, rid, act in self._lockstep:
            if s.sid not in self.sessions or s.session in lockstep:
                if s.sid in self.sessions:
                    rest.append((s, rid, act))  # a second STEP for the same session: next batch
                continue
            lockstep[s.session] = act
            replies[s.session] = (s, rid)
        self._lockstep = rest
        live: dict[Session, Action | None] = {}
        if realtime:
            for s in self.sessions.values():
                if s.mode == "realtime" and not self.clients[s.token].detached:
                    live[s.session] = s.action
                    replies[s.session] = (s, None)
        gov = self.governor
        if lockstep and (not live or gov.degraded):  # full steps: a lockstep replay never depends on the load
            self._run(lockstep, replies, None)
        elif lockstep:  # nobody degraded: one batch for all
            live.update(lockstep)
        if live:  # realtime sessions keep their rate by shedding sampling steps, then the re-aim (declared, counted)
            t0 = time.perf_counter()
            if self._run(live, replies, gov.plan):
                self.stats["degraded_ticks"] += gov.degraded
                gov.update((time.perf_counter() - t0) * 1e3)

    def _run(self, batch: dict[Session, Action | None], replies: dict[Session, tuple[_Sess, int | None]],
             plan: dict[str, Any] | None) -> bool:
        """Step ``batch`` at the governor's ``plan`` (None: the world's full level)."""
        try:
            chunks = self.world.step_many(batch, **(plan or {}))
        except Exception as e:
            self.stats["internal_errors"] += 1
            self._event("tick_error", error=repr(e))
            for sess in batch:
                s, rid = replies[sess]
                if s.mode == "lockstep":
                    self._send_error(self.clients[s.token].identity, "INTERNAL", f"tick failed: {e}", rid, s.sid)
            return False
        self.stats["ticks"] += 1
        spec = self.world.audio_spec
        for sess, chunk in chunks.items():
            s, rid = replies[sess]
            client = self.clients[s.token]
            body = {"tick": chunk.tick, "action_tick": chunk.tick - 1, "dropped": s.dropped, "timings": chunk.timings,
                    "frame": P.encode_array(chunk.frames[-1]),
                    "audio": None if chunk.audio is None else P.encode_array(chunk.audio, rate=spec["sample_rate"])}
            msg = P.envelope(P.OBS, body, rid, s.sid)
            if s.mode == "lockstep":
                s.last_step = (rid, msg) if rid is not None else None
                if self._send(client.identity, msg):
                    self.stats["frames_sent"] += 1
            elif s.credit > 0:
                if self._send(client.identity, msg):
                    s.credit -= 1
                    self.stats["frames_sent"] += 1
            else:
                if s.pending is not None:
                    s.dropped += 1
                    self.stats["frames_dropped"] += 1
                s.pending = msg
        return True

    # ---- liveness ---------------------------------------------------------------------
    def _liveness(self, now: float) -> None:
        for token, c in list(self.clients.items()):
            idle_ms = (now - c.last_seen) * 1e3
            if not c.detached and idle_ms > self.cfg.heartbeat_timeout_ms:
                c.detached = True
                self._event("detached", token=token, sessions=len(c.sessions))
            if c.detached and idle_ms > self.cfg.heartbeat_timeout_ms + self.cfg.resume_ttl_ms:
                self.clients.pop(token, None)  # client before its sessions: no observer sees them gone while it lingers
                for sid in list(c.sessions):
                    self._free(self.sessions[sid])
                if self.recorder is not None:
                    try:
                        self.recorder.close_client(token, "disconnected")
                    except Exception as e:  # the server outlives a failed write
                        self.stats["internal_errors"] += 1
                        self._event("record_error", token=token, error=repr(e))
                if self.by_identity.get(c.identity) == token:
                    self.by_identity.pop(c.identity, None)
                self._event("freed", token=token)

    def _free(self, s: _Sess) -> None:
        self.sessions.pop(s.sid, None)
        c = self.clients.get(s.token)
        if c is not None:
            c.sessions.discard(s.sid)
        s.session.close()
        self._lockstep = [x for x in self._lockstep if x[0] is not s]
