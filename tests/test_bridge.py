"""The engine bridge: protocol, server, Python client; robustness against bad input."""

import random
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from engine_bridge import protocol as P
from engine_bridge.client import BridgeClient, BridgeError
from engine_bridge.security import generate_keys
from engine_bridge.server import BridgeServer, ServerConfig
from tests.helpers import random_world
from worldsim.runtime.clock import StepGovernor


@pytest.fixture
def server(world):
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*", heartbeat_timeout_ms=400, resume_ttl_ms=600,
                                           max_sessions=8)).start()
    yield srv
    srv.stop()


def _raw(endpoint):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _reply(sock, timeout=2000):
    assert sock.poll(timeout), "no reply"
    return msgpack.unpackb(sock.recv(), raw=False)


def test_lockstep_snapshot_fork_and_close(server):
    c = BridgeClient(server.endpoint, timeout_ms=3000)
    assert c.welcome["schema"]["buttons"][0] == "forward" and c.welcome["world"]["resolution"] == [64, 64]
    sid = c.open(seed=3)
    obs = c.step(sid, {"keys": ["forward"], "mouse": [2.0, 0.0]})
    assert obs.frame.shape == (64, 64, 3) and obs.frame.dtype == np.uint8 and obs.audio.shape == (1260, 2)
    assert obs.tick == 1
    snap = c.snapshot(sid)
    a = [c.step(sid, {"keys": ["attack"]}).frame for _ in range(3)]
    r = c.restore(snap)
    b = [c.step(r, {"keys": ["attack"]}).frame for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    f = c.fork(sid)
    assert c.step(f).tick == 5
    c.close_session(sid)
    with pytest.raises(BridgeError, match="UNKNOWN_SESSION"):
        c.step(sid)
    with pytest.raises(BridgeError, match="INVALID_ACTION"):
        c.step(r, {"keys": ["fly"]})
    with pytest.raises(BridgeError, match="UNKNOWN_SNAPSHOT"):
        c.restore("p999")
    assert c.step(r).tick == 5  # still fine after the errors
    c.close()


def test_step_takes_the_array_form_of_actions(server):
    """PROTOCOL.md documents {"buttons": [...], "axes": [...]}; it equals the named form."""
    c = BridgeClient(server.endpoint, timeout_ms=3000)
    a, b = c.open(seed=5), c.open(seed=5)
    named = c.step(a, {"keys": ["turn_left", "attack"], "mouse": [3.0, 0.0]})
    arrays = c.step(b, {"buttons": [0, 0, 0, 0, 1, 0, 1, 0, 0], "axes": [3.0, 0.0]})
    assert np.array_equal(named.frame, arrays.frame) and np.array_equal(named.audio, arrays.audio)
    with pytest.raises(BridgeError, match="INVALID_ACTION: .*9 values of 0/1"):
        c.step(b, {"buttons": [1, 0]})
    # an axis no input device sends (it would overflow the network for every session batched with it)
    with pytest.raises(BridgeError, match="INVALID_ACTION: .*within"):
        c.step(b, {"buttons": [0] * 9, "axes": [1e30, 0.0]})
    assert c.step(a, {}).tick == 2 and server.stats["internal_errors"] == 0


def test_realtime_latest_action_and_credit(server):
    c = BridgeClient(server.endpoint)
    sid = c.open(mode="realtime", credit=2, action={"keys": ["turn_left"]})
    got = [c.recv_obs(2000) for _ in range(5)]
    assert all(o is not None for o in got) and [o.tick for o in got] == sorted(o.tick for o in got)
    # a client that stops granting credit gets no queue: frames are overwritten and counted
    c.auto_credit = False
    while c.recv_obs(300) is not None:
        pass
    time.sleep(0.5)  # ~8 ticks with no credit
    c.credit(sid, 1)
    late = c.recv_obs(1000)
    assert late is not None and late.dropped >= 3 and late.tick >= got[-1].tick + 5
    c.close()


def test_realtime_sheds_sampling_steps_lockstep_keeps_them(server):
    full = server.world.model.sampler.cfg.steps
    assert full >= 2
    server.governor = StepGovernor(full, period_s=1e-6)  # every realtime tick is over its budget
    c, d = BridgeClient(server.endpoint), BridgeClient(server.endpoint)
    sid = c.open(mode="realtime", credit=2)
    steps = [c.recv_obs(2000).timings["sampling_steps"] for _ in range(4)]
    assert steps[0] == full and steps[-1] == 1  # declared in every OBS
    lock = d.open(seed=1)
    o = d.step(lock)
    assert o.timings["sampling_steps"] == full and o.timings["light_prior"] == 0.0  # lockstep replays never depend on the load
    assert c.ping()["stats"]["degraded_ticks"] >= 1
    c.close_session(sid)
    c.close()
    d.close()


def test_version_mismatch_and_not_ready(server):
    s = _raw(server.endpoint)
    s.send(msgpack.packb({"v": [2, 0], "type": "HELLO", "rid": 1, "body": {}}))
    r = _reply(s)
    assert r["type"] == "ERROR" and r["body"]["code"] == "VERSION_MISMATCH" and r["rid"] == 1
    s.send(msgpack.packb({"v": [1, 0], "type": "OPEN", "rid": 2, "body": {}}))
    assert _reply(s)["body"]["code"] == "NOT_READY"
    s.send(msgpack.packb({"v": [1, 7], "type": "HELLO", "rid": 3, "body": {"capabilities": ["lockstep", "teleport"]}}))
    w = _reply(s)
    assert w["type"] == "WELCOME" and w["body"]["capabilities"] == ["lockstep"]  # minor mismatch: common caps
    s.send(msgpack.packb({"v": [1, 7], "type": "OPEN", "rid": 4, "body": {"mode": "realtime"}}))
    assert _reply(s)["body"]["code"] == "BAD_REQUEST"
    s.close()


def test_capacity(world):
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*", max_sessions=2)).start()
    try:
        c = BridgeClient(srv.endpoint)
        c.open(), c.open()
        with pytest.raises(BridgeError, match="CAPACITY") as e:
            c.open()
        assert e.value.retryable
    finally:
        srv.stop()


def test_killed_client_frees_its_session_and_resume_within_ttl(server):
    c = BridgeClient(server.endpoint)
    sid = c.open(mode="realtime")
    assert sid in server.sessions
    token = c.token
    c.close()  # killed mid-stream: no CLOSE
    time.sleep(0.5)  # past the heartbeat timeout: detached, not yet freed
    c2 = BridgeClient(server.endpoint, connect=False)
    c2.token = token
    w = c2.connect()
    assert w["resumed"] and w["sessions"] == [sid]
    c2.close()
    deadline = time.time() + 5
    # the server thread frees sessions and the client in one liveness pass; poll for both
    while (sid in server.sessions or token in server.clients) and time.time() < deadline:
        time.sleep(0.1)
    assert sid not in server.sessions and token not in server.clients


def _junk(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    good = msgpack.packb({"v": [1, 0], "type": rng.choice(P.REQUESTS), "rid": rng.randrange(100), "sid": "s1",
                          "body": {"action": {"keys": ["forward"]}, "mode": "lockstep"}})
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:
        return good[: rng.randrange(1, len(good))]  # truncated
    if kind == 2:
        return msgpack.packb(rng.choice([1, "x", [1, 2], None, 3.5, b"raw", True]))
    if kind == 3:
        vals = [None, -1, 2**62, "", "s" * 300, [], {}, {"x": 1}, 1.5e308, b"\x00" * 10, [1] * 50]
        return msgpack.packb({rng.choice(["v", "type", "rid", "sid", "body", "zz"]): rng.choice(vals) for _ in range(4)})
    if kind == 4:
        body = {rng.choice(["action", "mode", "seed", "start", "credit", "n", "snapshot", "capabilities", "resume"]):
                rng.choice([None, -5, "lockstep", "realtime", {"keys": "forward"}, {"keys": [1, 2]}, {"mouse": [1e400, 0]},
                            {"dtype": "uint8", "shape": [64, 64, 3], "data": b"xx"}, {"dtype": "f8", "shape": [1], "data": b""},
                            [1, 2, 3], 2**63 - 1, True]) for _ in range(3)}
        return msgpack.packb({"v": [1, 0], "type": rng.choice(P.REQUESTS), "rid": rng.randrange(100),
                              "sid": rng.choice([None, "s1", "s999", "x"]), "body": body})
    if kind == 5:
        return msgpack.packb({"v": [1, 0], "type": "STEP", "rid": 1, "body": {"action": {"keys": ["x"] * 70000}}})
    if kind == 6:
        return b"\xc6\xff\xff\xff\xf0" + b"\x00" * 16  # bin32 header claiming 4 GB
    return good.replace(b"STEP", b"STOP") if b"STEP" in good else b"\x80"


def _flood(endpoint: str, n: int = 10_000, seed: int = 0) -> int:
    """Send n junk messages from two sockets (one after a valid HELLO); runs in its own process
    so the flood does not share the server's interpreter lock, as a real misbehaving client would not."""
    rng = random.Random(seed)
    bad = _raw(endpoint)
    helloed = _raw(endpoint)
    helloed.send(msgpack.packb({"v": [1, 0], "type": "HELLO", "rid": 0, "body": {}}))
    _reply(helloed, 10000)
    sent = 0
    global FLOOD_T0
    FLOOD_T0 = time.monotonic()
    for i in range(n):
        sock = bad if i % 2 else helloed
        if i % 500 == 0:  # also multipart and oversized messages
            sock.send_multipart([b"a", b"b"])
            sock.send(b"\x00" * (2 << 20))
        sock.send(_junk(rng))
        sent += 1
        if i % 200 == 0:  # drain replies so our own queues stay small
            for s in (bad, helloed):
                while s.poll(0):
                    s.recv()
    return sent


FLOOD_T0 = 0.0


def test_fuzz_server_survives_and_good_client_keeps_its_frame_rate(server):
    import subprocess
    import sys
    from pathlib import Path

    good = BridgeClient(server.endpoint)
    sid = good.open(mode="realtime", credit=4)
    frames, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            o = good.recv_obs(200)
            if o is not None:
                frames.append(time.monotonic())

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", "import time, tests.test_bridge as tb; n = tb._flood(%r); print(n, tb.FLOOD_T0, time.monotonic())" % server.endpoint],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    n, f0, f1 = r.stdout.split()[-3:]
    sent = int(n)
    t0, elapsed = float(f0), float(f1) - float(f0)  # the flood's own window (CLOCK_MONOTONIC is system-wide)
    time.sleep(0.3)
    stop.set()
    t.join()
    assert sent == 10_000
    assert server._thread.is_alive() and server.stats["bad_requests"] > 1000
    # a control message is still answered, with the right error
    helloed = _raw(server.endpoint)
    helloed.send(msgpack.packb({"v": [1, 0], "type": "HELLO", "rid": 1_000_076, "body": {}}))
    helloed.send(msgpack.packb({"v": [1, 0], "type": "CLOSE", "rid": 1_000_077, "sid": "nope", "body": {}}))
    while True:
        r = _reply(helloed)
        if r.get("rid") == 1_000_077:  # junk used rids < 100
            break
    assert r["type"] == "ERROR" and r["body"]["code"] == "UNKNOWN_SESSION"
    # the well-behaved realtime client kept streaming during the flood (≥ half the tick rate)
    rate = sum(1 for f in frames if t0 <= f <= t0 + elapsed) / max(elapsed, 1e-6)
    assert rate >= 0.5 * server.world.tick_rate, f"good client got {rate:.1f} fps during the fuzz"
    assert good.step if good.recv_obs(1000) is not None else False
    good.close()
    helloed.close()


def test_curve_refuses_unknown_keys(world, tmp_path):
    import zmq.auth
    keys = generate_keys(tmp_path / "keys")
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*", curve_keys=str(tmp_path / "keys"))).start()
    try:
        spub, _ = zmq.auth.load_certificate(keys["server_public"])
        cpub, csec = zmq.auth.load_certificate(keys["client_secret"])
        ok = BridgeClient(srv.endpoint, curve={"server_public": spub, "public": cpub, "secret": csec})
        assert ok.step(ok.open()).frame.shape == (64, 64, 3)
        ok.close()
        rpub, rsec = zmq.curve_keypair()  # a key the server does not know
        with pytest.raises(BridgeError, match="TIMEOUT"):
            BridgeClient(srv.endpoint, timeout_ms=500, retries=0, curve={"server_public": spub, "public": rpub, "secret": rsec})
        with pytest.raises(BridgeError, match="TIMEOUT"):
            BridgeClient(srv.endpoint, timeout_ms=500, retries=0)  # plaintext client to a CURVE server
    finally:
        srv.stop()


def test_serve_cli_bad_input(capsys, tmp_path):
    from worldsim.cli import main
    assert main(["serve", "--world", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["serve", "--world", str(tmp_path), "--curve-keys", str(tmp_path / "nokeys")]) == 2
    (tmp_path / "afile").write_text("")
    assert main(["serve", "--save-dir", str(tmp_path / "afile" / "saves")]) == 2
    assert "--save-dir" in capsys.readouterr().err


def _write_timeline(path, text):
    path.write_text(text)
    return path


def test_cutscene_renders_mp4_and_wav_per_npc(server, tmp_path):
    import av
    import wave

    from engine_bridge.cutscene import render_cutscene

    tl = _write_timeline(tmp_path / "tl.yaml", """
ticks: 6
npcs:
  a: {seed: 1, actions: [{from: 0, to: 3, keys: [forward]}, {from: 3, to: 6, keys: [attack], mouse: [2, 0]}]}
  b: {actions: [{from: 0, to: 6, keys: [turn_left]}]}
""")
    with BridgeClient(server.endpoint, timeout_ms=3000) as c:
        written = render_cutscene(tl, tmp_path / "out", c, scale=2)
    assert set(written) == {"a", "b"}
    for name in ("a", "b"):
        with av.open(str(tmp_path / "out" / f"{name}.mp4")) as f:
            assert len(f.streams.audio) == 1  # sound muxed into the MP4 as well
            frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
        assert len(frames) == 6 and frames[0].shape == (128, 128, 3)
        with wave.open(str(tmp_path / "out" / f"{name}.wav")) as w:
            assert (w.getnframes(), w.getnchannels(), w.getframerate()) == (6 * 1260, 2, 22050)


def test_cutscene_batched_steps_equal_single_steps(server):
    with BridgeClient(server.endpoint, timeout_ms=3000) as c:
        s1, s2 = c.open(seed=7), c.open(seed=7)
        sizes, firsts = [], []
        for _ in range(5):
            batched = c.step_many({s1: {"keys": ["forward"]}, s2: {"keys": ["forward"]}})
            firsts.append(batched[s1].frame)
            sizes.append(batched[s1].timings["batch"])
            assert np.abs(batched[s1].frame.astype(int) - batched[s2].frame).mean() < 2.0
        # STEPs that are waiting together run as one forward (a loaded machine may split a tick)
        assert max(sizes) == 2
        s3 = c.open(seed=7)
        first = c.step(s3, {"keys": ["forward"]})
        assert first.timings["batch"] == 1
        # the same first tick as in the batch, up to bf16 rounding at another batch size
        assert np.abs(first.frame.astype(int) - firsts[0]).mean() < 2.0


@pytest.mark.parametrize("text,msg", [
    ("ticks: 0\nnpcs: {a: {}}", "'ticks'"),
    ("ticks: 5\nnpcs: {}", "'npcs'"),
    ("ticks: 5\nnpcs: {a: {actions: [{from: 3, to: 2}]}}", "from < to"),
    ("ticks: 5\nnpcs: {a: {actions: [{keys: [fly]}]}}", "unknown button"),
    ("ticks: 5\nnpcs: {a: {actions: [{mouse: [1]}]}}", "mouse"),
    ("ticks: 5\nnpcs: {a: {start: nothere.png}}", "not a readable image"),
    ("ticks: 5\nnpcs: {'../x': {}}", "NPC names"),
    ("ticks: [5\n", r"not valid YAML \(expected ',' or '\]', but got '<stream end>' at line 2, column 1\)"),
])
def test_bad_timeline_is_refused_with_its_place(tmp_path, text, msg):
    from engine_bridge.cutscene import TimelineError, load_timeline

    tl = _write_timeline(tmp_path / "tl.yaml", text)
    with pytest.raises(TimelineError, match=msg) as e:
        load_timeline(tl, ["forward", "attack"])
    assert str(tl) in str(e.value) and "\n" not in str(e.value)


def test_cutscene_cli_and_engine_demo(world, tmp_path):
    import subprocess
    import sys

    wdir = str(random_world(tmp_path / "w"))
    tl = _write_timeline(tmp_path / "tl.yaml", "ticks: 3\nnpcs: {x: {actions: [{keys: [forward]}]}}\n")
    r = subprocess.run([sys.executable, "-m", "worldsim.cli", "cutscene", str(tl), "--out", str(tmp_path / "cs"),
                        "--world", wdir, "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cs" / "x.mp4").stat().st_size > 0 and (tmp_path / "cs" / "x.wav").exists()
    bad = subprocess.run([sys.executable, "-m", "worldsim.cli", "cutscene", str(tmp_path / "none.yaml"), "--out",
                          str(tmp_path / "cs2")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no such timeline file" in bad.stderr and "Traceback" not in bad.stderr
    demo = subprocess.run([sys.executable, "demos/npc_cutscene.py", "--spawn-server", "--world", wdir, "--ticks", "4",
                           "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(
        f"{n}.{e}" for n in ("guard", "ambusher", "runner") for e in ("mp4", "wav"))


def test_bridge_bench_smoke(tmp_path):
    from worldsim.bench.bridge_bench import run_bridge_bench

    wdir = str(random_world(tmp_path / "w"))
    r = run_bridge_bench(wdir, ticks=12, session_counts=(1, 2), seconds=1.0, progress=False)
    for k in ("overhead_ms_p50", "overhead_ms_p99", "rtt_ms_p50", "inprocess_ms_p50", "sessions_held", "targets_met"):
        assert k in r, k
    assert 0 <= r["overhead_ms_p50"] <= r["rtt_ms_p50"] and r["inprocess_ms_p50"] > 0
    assert [x["sessions"] for x in r["realtime"]] == [1, 2] and all(x["min_fps"] > 0 for x in r["realtime"])
    assert all(x["light_prior_frac"] == 0.0 for x in r["realtime"])  # a latent-prior world has no light level
    assert r["server_errors"] == 0


def test_sessions_saved_on_the_servers_disk_and_loaded_again(world, tmp_path):
    (tmp_path / "saves").mkdir()
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*", save_dir=str(tmp_path / "saves"),
                                           max_saves=2)).start()
    try:
        c = BridgeClient(srv.endpoint, timeout_ms=5000)
        assert "save" in c.welcome["capabilities"]
        sid = c.open(seed=4)
        for _ in range(3):
            c.step(sid, {"keys": ["forward"]})
        info = c.save(sid, "level-1")
        assert info["tick"] == 3 and info["bytes"] > 0 and (tmp_path / "saves" / "level-1.wsnap").is_file()
        a = [c.step(sid, {"keys": ["attack"]}).frame for _ in range(3)]
        r = c.load("level-1")
        assert c.step(r, {"keys": ["attack"]}).tick == 4
        c2 = BridgeClient(srv.endpoint, timeout_ms=5000)  # another client (a later connection) loads it too
        r2 = c2.load("level-1")
        assert all(np.array_equal(x, c2.step(r2, {"keys": ["attack"]}).frame) for x in a)
        for bad in ("../escape", "", "a/b", "x" * 65, 7):
            with pytest.raises(BridgeError, match="BAD_REQUEST"):
                c.save(sid, bad)
        with pytest.raises(BridgeError, match="UNKNOWN_SNAPSHOT"):
            c.load("never-saved")
        c.save(sid, "level-2")
        with pytest.raises(BridgeError, match="CAPACITY"):
            c.save(sid, "level-3")  # the server keeps two
        c.save(sid, "level-2")  # overwriting one is fine
        (tmp_path / "saves" / "junk.wsnap").write_bytes(b"junk")
        with pytest.raises(BridgeError, match="not a readable snapshot") as err:
            c.load("junk")
        assert "junk:" in str(err.value) and str(tmp_path) not in str(err.value)  # the save's name, no server path
        assert c.step(r).tick == 5  # the client's sessions are fine after its errors

        # the save menu: listed by name (a file LOAD cannot use says why), deleted by name
        listed = {x["name"]: x for x in c2.saves()}
        assert sorted(listed) == ["junk", "level-1", "level-2"]
        assert (listed["level-1"]["tick"], listed["level-1"]["seed"]) == (3, 4) and "error" not in listed["level-1"]
        assert listed["level-1"]["bytes"] == (tmp_path / "saves" / "level-1.wsnap").stat().st_size
        assert listed["level-1"]["views"] >= 0 and listed["level-1"]["saved"].endswith("+00:00")
        assert "not a readable snapshot" in listed["junk"]["error"] and str(tmp_path) not in listed["junk"]["error"]
        c2.delete_save("level-1")
        assert not (tmp_path / "saves" / "level-1.wsnap").exists()
        assert [x["name"] for x in c.saves()] == ["junk", "level-2"]
        with pytest.raises(BridgeError, match="UNKNOWN_SNAPSHOT"):
            c.delete_save("level-1")
        with pytest.raises(BridgeError, match="UNKNOWN_SNAPSHOT"):
            c.load("level-1")
        with pytest.raises(BridgeError, match="BAD_REQUEST"):
            c.delete_save("../saves/level-2")
        with pytest.raises(BridgeError, match="CAPACITY"):
            c.save(sid, "level-3")  # junk and level-2 fill the two places ...
        c.delete_save("junk")
        c.save(sid, "level-3")  # ... until one is deleted
        assert c.step(r).tick == 6
        c.close()
        c2.close()
    finally:
        srv.stop()
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*")).start()  # no save dir: not offered
    try:
        c = BridgeClient(srv.endpoint, timeout_ms=3000)
        assert "save" not in c.welcome["capabilities"]
        with pytest.raises(BridgeError, match="keeps no saves"):
            c.save(c.open(), "x")
        for call in (c.saves, lambda: c.delete_save("x"), lambda: c.load("x")):
            with pytest.raises(BridgeError, match="keeps no saves"):
                call()
        c.close()
    finally:
        srv.stop()
