"""Recording an engine's gameplay through the bridge (`worldsim record bridge`, capability "record")."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine_bridge import protocol as P
from engine_bridge.client import BridgeClient, BridgeError
from engine_bridge.recording import Recorder, RecordConfig
from engine_bridge.server import BridgeServer, ServerConfig
from tests.helpers import random_world
from worldsim.cli import main as cli_main
from worldsim.data import open_episodes
from worldsim.runtime import World

SCHEMA = {"buttons": ["jump", "fire", "left", "right"], "axes": ["steer"], "groups": [["left", "right"]],
          "axis_low": [-1.0], "axis_high": [1.0]}
AUDIO = {"sample_rate": 22050, "channels": 2, "samples_per_step": 735}


def _server(out, **rec):
    cfg = ServerConfig(bind="tcp://127.0.0.1:*", heartbeat_timeout_ms=300, resume_ttl_ms=300)
    return BridgeServer(None, cfg, Recorder(RecordConfig(out=str(out), **rec))).start()


@pytest.fixture
def rec_server(tmp_path):
    srv = _server(tmp_path / "data", episode_steps=20)
    yield srv
    srv.stop()


def _frame(t, h=120, w=160):
    f = np.zeros((h, w, 3), np.uint8)
    f[:, : (t * 7) % w] = (200, 40 + t, 10)  # a bar that grows with t: frames differ tick to tick
    return f


def test_an_engine_records_episodes_that_open_verify_and_roll_over(rec_server):
    c = BridgeClient(rec_server.endpoint, timeout_ms=3000)
    assert c.welcome["world"] is None and "record" in c.welcome["capabilities"]
    assert c.welcome["record"]["resolution"] == [64, 64] and "lockstep" not in c.welcome["capabilities"]
    rec = c.record_open(SCHEMA, 30.0, audio=AUDIO, fields=("pose", "reward", "terminated"),
                        meta={"map": "level-3", "source": "my-engine", "engine_version": "5.4"})
    for t in range(45):
        action = {"keys": ["jump"], "axes": {"steer": 0.5}} if t % 2 else {"buttons": [0, 1, 0, 1], "axes": [-2.0]}
        r = c.record_step(rec, _frame(t), action, audio=np.full((735, 2), t, np.int16),
                          pose=[t, 2 * t, 0, 90.0, 0], reward=float(t), terminated=t == 44)
        assert r["steps"] == t + 1
    done = c.record_close(rec, ended_by="level_end")
    assert done["steps"] == 45 and done["episodes"] == ["ep_000000", "ep_000001", "ep_000002"]
    eps = open_episodes(rec_server.recorder.out)
    assert [len(e) for e in eps] == [20, 20, 5]
    for e in eps:
        e.verify()
    assert [e.meta["ended_by"] for e in eps] == ["length", "length", "level_end"]
    assert [e.meta["part"] for e in eps] == [0, 1, 2] and {e.meta["recording"] for e in eps} == {"r1"}
    e = eps[2]
    assert e.meta["source"] == "my-engine" and e.meta["map"] == "level-3" and e.meta["engine_version"] == "5.4"
    assert e.tick_rate == 30.0 and e.schema.buttons == ("jump", "fire", "left", "right") and e.resolution == (64, 64)
    assert e.frames.shape == (5, 64, 64, 3) and e.frames[0, :, 0].tolist() == [[200, 80, 10]] * 64  # resized (area)
    assert (e.audio[:, 0, 0] == np.arange(40, 45)).all() and e.audio.shape == (5, 735, 2)
    assert e.pose[:, 0].tolist() == [40, 41, 42, 43, 44] and e.reward.tolist() == [40, 41, 42, 43, 44]
    assert e.terminated.tolist() == [False] * 4 + [True]
    # both action forms: named (odd t) and array (even t, the steer clipped to its bound)
    assert e.buttons.tolist()[:2] == [[0, 1, 0, 1], [1, 0, 0, 0]] and e.axes[:2, 0].tolist() == [-1.0, 0.5]
    # a second recording appends to the data set
    rec2 = c.record_open({"buttons": ["a"], "axes": []}, 10.0)
    c.record_step(rec2, np.zeros((64, 64, 3), np.uint8))
    assert c.record_close(rec2)["episodes"] == ["ep_000003"]


def test_memory_per_open_recording_is_bounded(tmp_path):
    """Sound declared huge makes shorter episodes, not a server holding gigabytes per recording."""
    r = Recorder(RecordConfig(out=str(tmp_path), episode_mb=128))
    small = r.open("t", {"schema": {"buttons": ["a"]}, "tick_rate": 10.0, "audio": AUDIO})
    big = r.open("t", {"schema": {"buttons": ["a"]}, "tick_rate": 10.0,
                       "audio": {"sample_rate": 48000, "channels": 8, "samples_per_step": 65536}})
    assert small["episode_steps"] == 2000 and big["episode_steps"] == (128 << 20) // (64 * 64 * 3 + 65 + 2 * 65536 * 8)
    assert r.close("t", big["rec"])["episodes"] == []  # nothing sent, nothing written


def test_a_recording_as_a_context_manager(rec_server):
    c = BridgeClient(rec_server.endpoint, timeout_ms=3000)
    with c.recording({"buttons": ["a"]}, 10.0, meta={"map": "ok"}) as r:
        for _ in range(3):
            r.step(np.zeros((64, 64, 3), np.uint8), {"keys": ["a"]})
    assert r.result["steps"] == 3 and r.close() is r.result  # closed once, on leaving
    with pytest.raises(RuntimeError, match="engine crashed"):
        with c.recording({"buttons": ["a"]}, 10.0, meta={"map": "crash"}) as r:
            r.step(np.zeros((64, 64, 3), np.uint8))
            raise RuntimeError("engine crashed")
    eps = open_episodes(rec_server.recorder.out)
    assert [(e.meta["map"], len(e), e.meta["ended_by"]) for e in eps] == [("ok", 3, "client"), ("crash", 1, "error")]


@pytest.mark.parametrize("body, msg", [
    ({"tick_rate": 30.0}, "schema"),
    ({"schema": SCHEMA, "tick_rate": 0}, "tick_rate"),
    ({"schema": SCHEMA, "tick_rate": "fast"}, "tick_rate"),
    ({"schema": SCHEMA, "tick_rate": 30, "audio": {"sample_rate": 22050, "channels": 0, "samples_per_step": 9}},
     "audio.channels"),
    ({"schema": SCHEMA, "tick_rate": 30, "meta": {"steps": 5}}, "belong to the episode format"),
    ({"schema": SCHEMA, "tick_rate": 30, "meta": {"x": {"nested": 1}}}, "meta"),
    ({"schema": SCHEMA, "tick_rate": 30, "fields": ["depth"]}, "fields"),
    ({"schema": SCHEMA, "tick_rate": 30, "fields": [["pose"]]}, "fields"),
    ({"schema": SCHEMA, "tick_rate": 30, "meta": {"x": [b"\x00"]}}, "meta"),
    ({"schema": SCHEMA, "tick_rate": 30, "meta": {"x": float("nan")}}, "finite"),
    ({"schema": {"buttons": ["a", "a"]}, "tick_rate": 30}, "duplicate"),
])
def test_bad_rec_open_is_refused(rec_server, body, msg):
    c = BridgeClient(rec_server.endpoint, timeout_ms=3000, retries=0)
    with pytest.raises(BridgeError, match=msg) as e:
        c.request("REC_OPEN", body)
    assert e.value.code == "BAD_REQUEST"


def test_bad_steps_are_refused_and_lose_nothing(rec_server):
    c = BridgeClient(rec_server.endpoint, timeout_ms=3000, retries=0)
    rec = c.record_open(SCHEMA, 30.0, audio=AUDIO, fields=("pose",))
    good = dict(audio=np.zeros((735, 2), np.int16), pose=np.zeros(5))
    c.record_step(rec, _frame(1), {}, **good)
    bad = [
        (dict(frame=np.zeros((8, 8), np.uint8), **good), "BAD_REQUEST", "uint8 \\(H, W, 3\\)"),
        (dict(frame=_frame(2), action={"keys": ["left", "right"]}, **good), "INVALID_ACTION", "exclusive"),
        (dict(frame=_frame(2), action={"buttons": [1, 0]}, **good), "INVALID_ACTION", "4 values"),
        (dict(frame=_frame(2), audio=np.zeros((10, 2), np.int16), pose=np.zeros(5)), "BAD_REQUEST", "as declared"),
        (dict(frame=_frame(2), pose=np.zeros(5)), "BAD_REQUEST", "audio"),
        (dict(frame=_frame(2), audio=np.zeros((735, 2), np.int16)), "BAD_REQUEST", "missing \\['pose'\\]"),
        (dict(frame=_frame(2), reward=1.0, **good), "BAD_REQUEST", "undeclared \\['reward'\\]"),
        (dict(frame=_frame(2), audio=np.zeros((735, 2), np.int16), pose=np.array([0, 0, 0, np.nan, 0])),
         "BAD_REQUEST", "finite"),
    ]
    for kw, code, msg in bad:
        with pytest.raises(BridgeError, match=msg) as e:
            c.record_step(rec, **kw)
        assert e.value.code == code
    with pytest.raises(BridgeError, match="no open recording") as e:
        c.record_step("r99", _frame(3), **good)
    other = BridgeClient(rec_server.endpoint, timeout_ms=3000, retries=0)
    with pytest.raises(BridgeError, match="no open recording"):  # another client's recording is not yours
        other.record_step(rec, _frame(3), **good)
    # a retried request (same rid, reply lost) is answered again, not written twice
    body = {"frame": P.encode_array(_frame(4)), "action": {}, "audio": P.encode_array(np.zeros((735, 2), np.int16)),
            "pose": P.encode_array(np.zeros(5, np.float32))}
    first = c._roundtrip("REC_STEP", body, rec, rid=10_000)["body"]
    again = c._roundtrip("REC_STEP", body, rec, rid=10_000)["body"]
    assert first == again and first["steps"] == 2
    assert c.record_close(rec)["steps"] == 2
    (ep,) = open_episodes(rec_server.recorder.out)
    assert len(ep) == 2 and rec_server.stats["internal_errors"] == 0


def test_what_each_server_offers(tmp_path):
    world = World.load(str(random_world(tmp_path / "w")))
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*")).start()
    try:
        c = BridgeClient(srv.endpoint, timeout_ms=3000, retries=0)
        assert "record" not in c.welcome["capabilities"] and c.welcome["record"] is None
        with pytest.raises(BridgeError, match="does not record; run `worldsim record bridge"):
            c.record_open(SCHEMA, 30.0)
    finally:
        srv.stop()
    srv = _server(tmp_path / "d")
    try:
        c = BridgeClient(srv.endpoint, timeout_ms=3000, retries=0)
        with pytest.raises(BridgeError, match="only records"):
            c.open()
        old = BridgeClient(srv.endpoint, timeout_ms=3000, retries=0, capabilities=("lockstep",))  # a 1.0 client
        with pytest.raises(BridgeError, match="'record' was not negotiated"):
            old.record_open(SCHEMA, 30.0)
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="needs a world"):
        BridgeServer(None, ServerConfig())


def test_capacity_and_what_a_vanished_or_stopped_engine_leaves(tmp_path):
    srv = _server(tmp_path / "d", max_open=1)
    try:
        c = BridgeClient(srv.endpoint, timeout_ms=3000, retries=0)
        gone = c.record_open({"buttons": ["a"]}, 10.0)
        for _ in range(5):
            c.record_step(gone, np.zeros((64, 64, 3), np.uint8), {"keys": ["a"]})
        with pytest.raises(BridgeError, match="maximum of 1 open recordings") as e:
            BridgeClient(srv.endpoint, timeout_ms=3000, retries=0).record_open({"buttons": ["a"]}, 10.0)
        assert e.value.code == "CAPACITY" and e.value.retryable
        c.close()  # the engine vanishes without REC_CLOSE: after heartbeat + resume window its steps are written
        deadline = time.monotonic() + 10
        while not srv.recorder.written and time.monotonic() < deadline:
            time.sleep(0.1)
        c2 = BridgeClient(srv.endpoint, timeout_ms=3000, retries=0)
        last = c2.record_open({"buttons": ["a"]}, 10.0)  # its slot is free again
        c2.record_step(last, np.zeros((64, 64, 3), np.uint8))
    finally:
        srv.stop()  # a server that stops writes what is open
    eps = open_episodes(tmp_path / "d")
    assert [(len(e), e.meta["ended_by"]) for e in eps] == [(5, "disconnected"), (1, "server_stopped")]


def test_players_pointed_at_a_recording_server_are_told_so(rec_server, tmp_path):
    from engine_bridge.cutscene import render_cutscene
    from worldsim.errors import WorldsimError
    from worldsim.play.sources import RemoteSource

    with pytest.raises(WorldsimError, match="serves no world .*worldsim serve"):
        RemoteSource(rec_server.endpoint)
    (tmp_path / "t.yaml").write_text("ticks: 2\nnpcs: {guard: {actions: [{}]}}\n")
    with pytest.raises(BridgeError, match="NO_WORLD"):
        render_cutscene(tmp_path / "t.yaml", tmp_path / "out", BridgeClient(rec_server.endpoint, timeout_ms=3000))


def test_engine_recording_demo_writes_a_trainable_data_set(tmp_path, capsys):
    """demos/engine_recording.py against a spawned `worldsim record bridge`: frames, sound, pose."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "demos" / "engine_recording.py"
    spec = importlib.util.spec_from_file_location("demo_engine_recording", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--spawn-server", "--out", str(tmp_path / "arena"), "--ticks", "120"]) == 0
    assert "recorded 120 ticks as ep_000000" in capsys.readouterr().out
    (ep,) = open_episodes(tmp_path / "arena")
    ep.verify()
    assert ep.frames.shape == (120, 64, 64, 3) and ep.audio.shape == (120, 1260, 2) and ep.pose.shape == (120, 5)
    fired = ep.buttons[:, ep.schema.buttons.index("fire")].astype(bool)
    loud = np.abs(ep.audio.astype(np.int32)).max(axis=(1, 2)) > 1000
    assert fired.any() and loud[1:][fired[:-1]].all()  # a shot is heard with the next frame
    assert np.abs(np.diff(ep.pose[:, :2], axis=0)).sum() > 100  # the ship moves


def test_record_bridge_cli_writes_open_episodes_on_sigterm(tmp_path):
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "record", "bridge", "--out", str(tmp_path / "d"),
                          "--bind", f"tcp://127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        c = BridgeClient(f"tcp://127.0.0.1:{port}", timeout_ms=20000, retries=0)
        rec = c.record_open({"buttons": ["a"]}, 10.0)
        for _ in range(2):
            c.record_step(rec, np.zeros((64, 64, 3), np.uint8))
        c.record_step(rec, np.full((720, 1280, 3), 255, np.uint8))  # a 720p frame fits the CLI's message limit
        c.close()
    finally:
        p.send_signal(signal.SIGTERM)
        p.send_signal(signal.SIGTERM)  # twice, as `timeout` + a kill can: the stop still finishes its writes
        err = p.communicate(timeout=60)[1]
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert "wrote 1 episode(s)" in err
    (ep,) = open_episodes(tmp_path / "d")
    assert len(ep) == 3 and ep.meta["ended_by"] == "server_stopped" and (ep.frames[2] == 255).all()


def test_record_bridge_cli_bad_input(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli_main(["record", "bridge", "--out", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert cli_main(["record", "bridge", "--out", str(tmp_path / "d"), "--curve-keys", str(tmp_path / "none")]) == 2
    assert "--curve-keys" in capsys.readouterr().err
    assert cli_main(["record", "bridge", "--out", str(tmp_path / "d"), "--max-message-mb", "65"]) == 2
    assert "at most 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["record", "bridge", "--out", str(tmp_path / "d"), "--episode-steps", "0"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
