"""Wire format of the worldsim bridge (see PROTOCOL.md): one msgpack map per ZeroMQ frame."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = (1, 2)
CAPABILITIES = ("lockstep", "realtime", "snapshot", "fork", "resume", "record", "save")
WORLD_CAPABILITIES = ("lockstep", "realtime", "snapshot", "fork")  # what a server with a world offers
MAX_MESSAGE_BYTES = 1 << 20

# client → server
HELLO, OPEN, STEP, ACT, CREDIT, SNAPSHOT, RESTORE, FORK, CLOSE, PING = (
    "HELLO", "OPEN", "STEP", "ACT", "CREDIT", "SNAPSHOT", "RESTORE", "FORK", "CLOSE", "PING")
REC_OPEN, REC_STEP, REC_CLOSE = "REC_OPEN", "REC_STEP", "REC_CLOSE"  # 1.1, capability "record"
# 1.2, capability "save": sessions kept on the server's disk, listed and deleted (a game's save menu)
SAVE, LOAD, SAVES, DELETE_SAVE = "SAVE", "LOAD", "SAVES", "DELETE_SAVE"
REQUESTS = (HELLO, OPEN, STEP, ACT, CREDIT, SNAPSHOT, RESTORE, FORK, CLOSE, PING, REC_OPEN, REC_STEP, REC_CLOSE,
            SAVE, LOAD, SAVES, DELETE_SAVE)
# server → client
WELCOME, OK, ERROR, OBS, PONG = "WELCOME", "OK", "ERROR", "OBS", "PONG"

ERROR_CODES = ("BAD_REQUEST", "VERSION_MISMATCH", "NOT_READY", "UNAUTHORIZED", "UNKNOWN_SESSION", "UNKNOWN_SNAPSHOT",
               "CAPACITY", "INVALID_ACTION", "INTERNAL")
RETRYABLE = {"CAPACITY", "INTERNAL", "NOT_READY"}


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is the ERROR code to answer with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode one message with hard limits; raises ProtocolError(BAD_REQUEST) on anything odd."""
    if len(data) > max_bytes:
        raise ProtocolError("BAD_REQUEST", f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_bin_len=max_bytes,
                              max_str_len=65536, max_array_len=65536, max_map_len=4096, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("BAD_REQUEST", f"not a valid msgpack message ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("BAD_REQUEST", f"a message must be a map, got {type(msg).__name__}")
    return msg


def envelope(type_: str, body: dict | None = None, rid: int | None = None, sid: str | None = None) -> dict[str, Any]:
    return {"v": list(PROTOCOL_VERSION), "type": type_, "rid": rid, "sid": sid, "body": body or {}}


def error(code: str, message: str, rid: Any = None, sid: Any = None) -> dict[str, Any]:
    rid = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
    sid = sid if isinstance(sid, str) else None
    return envelope(ERROR, {"code": code, "message": message[:500], "retryable": code in RETRYABLE}, rid, sid)


def encode_array(a: np.ndarray, **extra: Any) -> dict[str, Any]:
    # little-endian on the wire, dtype by its full name ("uint8", "int16", "float32") as PROTOCOL.md says
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes(), **extra}


_DTYPES = {"uint8": np.uint8, "u1": np.uint8, "int16": np.int16, "i2": np.int16, "float32": np.float32, "f4": np.float32}


def decode_array(d: Any, what: str = "array") -> np.ndarray:
    if not isinstance(d, dict) or not {"dtype", "shape", "data"} <= set(d):
        raise ProtocolError("BAD_REQUEST", f"{what}: expected {{dtype, shape, data}}")
    dt = _DTYPES.get(str(d["dtype"]))
    shape = d["shape"]
    if dt is None:
        raise ProtocolError("BAD_REQUEST", f"{what}: unsupported dtype {d['dtype']!r}")
    if (not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 20
                                               for s in shape)):
        raise ProtocolError("BAD_REQUEST", f"{what}: bad shape {shape!r}")
    data = d["data"]
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * np.dtype(dt).itemsize:
        raise ProtocolError("BAD_REQUEST", f"{what}: data length does not match dtype/shape")
    return np.frombuffer(data, dt).reshape(shape)


def check_envelope(msg: dict[str, Any]) -> tuple[str, int | None, str | None, dict]:
    t = msg.get("type")
    if not isinstance(t, str) or t not in REQUESTS:
        raise ProtocolError("BAD_REQUEST", f"unknown message type {t!r}")
    v = msg.get("v")
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)):
        raise ProtocolError("BAD_REQUEST", "missing or malformed protocol version 'v' ([major, minor])")
    rid = msg.get("rid")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        raise ProtocolError("BAD_REQUEST", "'rid' must be an integer")
    sid = msg.get("sid")
    if sid is not None and not isinstance(sid, str):
        raise ProtocolError("BAD_REQUEST", "'sid' must be a string")
    body = msg.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("BAD_REQUEST", "'body' must be a map")
    return t, rid, sid, body
