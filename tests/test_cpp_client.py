"""The C++ reference client (engine_bridge/clients/cpp) against a live bridge server.

Builds `worldsim_client` with CMake into a temporary directory, serves a tiny random world on a
free loopback port and runs 100 lockstep ticks, then 20 realtime frames (--realtime: the server ticks,
the client returns credit and acts); then records a raw RGB file through an in-process
`worldsim record bridge` server (--record) and reads the episode it wrote. A missing toolchain or
missing Debian headers FAIL these tests (CI installs them): cmake g++ pkg-config libzmq3-dev
cppzmq-dev libmsgpack-cxx-dev.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CPP_DIR = ROOT / "engine_bridge" / "clients" / "cpp"
APT = "apt-get install -y cmake g++ pkg-config libzmq3-dev cppzmq-dev libmsgpack-cxx-dev"
TICKS = 100


def _fail(msg: str) -> None:
    pytest.fail(f"{msg}\n(install the C++ client's build dependencies with: {APT})", pytrace=False)


def _run(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        out = (p.stdout + p.stderr)[-4000:]
        # our CMakeLists names the Debian package in each "not found" error; surface those first
        missing = [" ".join(m.split()) for m in re.findall(r"\S+ header \S+ not found[^()]*\(Debian package:[^)]+\)|"
                                                              r"libzmq not found[^()]*\(Debian package:[^)]+\)", out)]
        _fail(f"{what} failed (exit {p.returncode})" + (": " + "; ".join(missing) if missing else "") + f"\n{out}")
    return p


@pytest.fixture(scope="module")
def cpp_client(tmp_path_factory) -> Path:
    missing = []
    if shutil.which("cmake") is None:
        missing.append("cmake (Debian package: cmake)")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++17 compiler (Debian package: g++)")
    if shutil.which("pkg-config") is None:
        missing.append("pkg-config (Debian package: pkg-config)")
    elif subprocess.run(["pkg-config", "--exists", "libzmq"]).returncode != 0:
        missing.append("libzmq via pkg-config (Debian package: libzmq3-dev)")
    if missing:
        _fail("cannot build the C++ client, missing: " + ", ".join(missing))
    build = tmp_path_factory.mktemp("cpp") / "build"
    _run(["cmake", "-S", str(CPP_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"], "cmake configure", 300)
    _run(["cmake", "--build", str(build)], "cmake build", 600)
    exe = build / "worldsim_client"
    assert exe.is_file(), f"the build did not produce {exe}"
    return exe


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    from engine_bridge.server import BridgeServer, ServerConfig
    from tests.helpers import random_world
    from worldsim.runtime import World

    world = World.load(str(random_world(tmp_path / "world")))
    addr = f"tcp://127.0.0.1:{_free_port()}"
    srv = BridgeServer(world, ServerConfig(bind=addr))
    srv.start()
    try:
        yield srv, addr, world
    finally:
        srv.stop()


def test_cpp_client_100_lockstep_ticks(cpp_client, server, tmp_path):
    srv, addr, world = server
    H, W = world.resolution
    out = tmp_path / "frames.rgb"
    # generous timeout: CI machines may be busy; a dead server still fails within it
    p = subprocess.run([str(cpp_client), "--addr", addr, "--ticks", str(TICKS), "--out", str(out), "--seed", "3",
                        "--timeout-ms", "30000"], capture_output=True, text=True, timeout=400)
    log = f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 0, log
    assert out.stat().st_size == TICKS * H * W * 3, log
    summary = p.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"ok ticks=(\d+) frames_bytes=(\d+) audio_samples=(\d+) mean_step_ms=([0-9.]+)", summary)
    assert m, f"bad summary line {summary!r}\n{log}"
    assert int(m.group(1)) == TICKS
    assert int(m.group(2)) == TICKS * H * W * 3
    assert world.name in p.stdout and "forward" in p.stdout, log  # WELCOME was read and printed
    assert srv.stats["frames_sent"] == TICKS and srv.stats["errors_sent"] == 0, srv.stats


# ---- record mode (protocol 1.1, capability "record") ------------------------------------------
REC_FRAMES = 60
DOOM_BUTTONS = ["forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use", "run"]


@pytest.fixture
def record_server(tmp_path):
    from engine_bridge.recording import Recorder, RecordConfig
    from engine_bridge.server import BridgeServer, ServerConfig

    out = tmp_path / "rec"
    addr = f"tcp://127.0.0.1:{_free_port()}"
    srv = BridgeServer(None, ServerConfig(bind=addr), Recorder(RecordConfig(out=str(out)))).start()
    try:
        yield srv, addr, out
    finally:
        srv.stop()


def _record(exe: Path, addr: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    p = subprocess.run([str(exe), "--addr", addr, "--timeout-ms", "30000", *args], capture_output=True, text=True,
                       timeout=400)
    return p, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def _scripted_buttons(n: int) -> np.ndarray:
    """The buttons of the client's scripted input (pack_action), in DOOM schema order."""
    b = np.zeros((n, len(DOOM_BUTTONS)), np.uint8)
    for t in range(n):
        b[t, DOOM_BUTTONS.index("turn_left" if 30 <= t < 45 else "forward")] = 1
        if t % 10 == 9:
            b[t, DOOM_BUTTONS.index("attack")] = 1
    return b


def test_cpp_client_records_a_frame_file(cpp_client, record_server, tmp_path):
    from worldsim.data import open_episodes

    srv, addr, out = record_server
    frames = np.random.default_rng(7).integers(0, 256, (REC_FRAMES, 64, 64, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(REC_FRAMES)  # distinct even if the generator were not
    src = tmp_path / "frames.rgb"
    frames.tofile(src)

    p, log = _record(cpp_client, addr, "--record", str(src), "--size", "64x64")
    assert p.returncode == 0, log
    assert p.stdout.strip().splitlines()[-1] == f"ok recorded={REC_FRAMES} episodes=ep_000000", log

    eps = open_episodes(out)
    assert len(eps) == 1, [e.path for e in eps]
    ep = eps[0]
    assert ep.path.name == "ep_000000" and len(ep) == REC_FRAMES
    np.testing.assert_array_equal(np.asarray(ep.frames), frames)
    assert ep.meta["source"] == "worldsim_client" and ep.meta["map"] == "replay", ep.meta
    assert ep.meta["tick_rate"] == 17.5 and ep.meta["ended_by"] == "end_of_file", ep.meta
    assert list(ep.schema.buttons) == DOOM_BUTTONS and list(ep.schema.axes) == ["mouse_dx", "mouse_dy"]
    np.testing.assert_array_equal(np.asarray(ep.buttons), _scripted_buttons(REC_FRAMES))
    np.testing.assert_array_equal(np.asarray(ep.axes), np.zeros((REC_FRAMES, 2), np.float32))
    assert srv.stats["errors_sent"] == 0, srv.stats


def test_cpp_client_record_ticks_caps_the_frames(cpp_client, record_server, tmp_path):
    from worldsim.data import open_episodes

    _, addr, out = record_server
    src = tmp_path / "frames.rgb"
    np.random.default_rng(1).integers(0, 256, (12, 32, 48, 3), dtype=np.uint8).tofile(src)
    p, log = _record(cpp_client, addr, "--record", str(src), "--size", "32x48", "--ticks", "5", "--tick-rate", "30")
    assert p.returncode == 0, log
    assert p.stdout.strip().splitlines()[-1] == "ok recorded=5 episodes=ep_000000", log
    (ep,) = open_episodes(out)
    assert len(ep) == 5 and ep.frames.shape == (5, 64, 64, 3)  # resized to the server's resolution
    assert ep.meta["tick_rate"] == 30.0 and ep.meta["ended_by"] == "tick_limit", ep.meta


@pytest.mark.parametrize("size", [64 * 64 * 3 * 2 + 5, 0])
def test_cpp_client_record_rejects_a_bad_frame_file(cpp_client, record_server, tmp_path, size):
    srv, addr, out = record_server
    src = tmp_path / "frames.rgb"
    src.write_bytes(bytes(size))
    p, log = _record(cpp_client, addr, "--record", str(src), "--size", "64x64")
    assert p.returncode == 1, log
    want = "not a whole number of 64x64x3 frames" if size else "is empty"
    assert want in p.stderr and str(src) in p.stderr, log
    assert srv.stats["messages"] == 0, srv.stats  # checked before connecting
    assert not any(out.iterdir())

    p, log = _record(cpp_client, addr, "--record", str(tmp_path / "missing.rgb"))
    assert p.returncode == 1 and "no such file" in p.stderr, log


def test_cpp_client_record_against_a_world_server(cpp_client, server, tmp_path):
    _, addr, _ = server
    src = tmp_path / "frames.rgb"
    np.zeros((2, 64, 64, 3), np.uint8).tofile(src)
    p, log = _record(cpp_client, addr, "--record", str(src))
    assert p.returncode == 4, log  # protocol violation: the capability was not granted
    assert "does not offer the 'record' capability" in p.stderr and "worldsim record bridge" in p.stderr, log


# ---- realtime mode (capability "realtime": the server ticks, the client returns credit) -------
RT_TICKS = 20


def test_cpp_client_plays_realtime(cpp_client, server, tmp_path):
    srv, addr, world = server
    H, W = world.resolution
    out = tmp_path / "rt.rgb"
    p = subprocess.run([str(cpp_client), "--addr", addr, "--realtime", "--ticks", str(RT_TICKS), "--out", str(out),
                        "--seed", "2", "--timeout-ms", "30000"], capture_output=True, text=True, timeout=400)
    log = f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 0, log
    summary = p.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"ok realtime ticks={RT_TICKS} "), log
    m = re.fullmatch(r"ok realtime ticks=(\d+) frames_bytes=(\d+) dropped=(\d+) fps=([0-9]+\.[0-9])", summary)
    assert m, f"bad summary line {summary!r}\n{log}"
    assert int(m.group(2)) == RT_TICKS * H * W * 3, log
    assert float(m.group(4)) > 0, log  # no timing threshold: the machine is shared
    assert out.stat().st_size == RT_TICKS * H * W * 3, log
    frames = np.fromfile(out, np.uint8).reshape(RT_TICKS, H, W, 3)
    assert not (frames == frames[:1]).all(), "all realtime frames are identical"
    assert world.name in p.stdout, log  # WELCOME was read and printed
    assert srv.stats["errors_sent"] == 0, srv.stats  # every ACT and CREDIT was accepted
    assert srv.stats["frames_sent"] >= RT_TICKS, srv.stats
    assert not srv.sessions, srv.sessions  # CLOSE freed the session


@pytest.mark.parametrize("args, want", [
    (["--record", "x.rgb"], "--realtime and --record are different modes"),
    (["--size", "64x64"], "record mode options cannot be used with --realtime: --size"),
    (["--tick-rate", "30"], "record mode options cannot be used with --realtime: --tick-rate"),
    (["--retries", "2"], "realtime mode does not reconnect"),
])
def test_cpp_client_realtime_rejects_other_modes_options(cpp_client, tmp_path, args, want):
    # checked before anything connects: no server needed
    p = subprocess.run([str(cpp_client), "--addr", f"tcp://127.0.0.1:{_free_port()}", "--realtime", *args],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert want in p.stderr, p.stderr
    assert not (tmp_path / "frames.rgb").exists()  # failed before opening --out


def test_cpp_client_realtime_against_a_record_server(cpp_client, record_server, tmp_path):
    _, addr, _ = record_server
    p = subprocess.run([str(cpp_client), "--addr", addr, "--realtime", "--ticks", "3", "--out",
                        str(tmp_path / "rt.rgb"), "--timeout-ms", "30000"], capture_output=True, text=True, timeout=400)
    assert p.returncode == 4, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "does not offer the 'realtime' capability" in p.stderr and "use --record" in p.stderr, p.stderr


# ---- saves on the server's disk (protocol 1.2, capability "save") -------------------------------
@pytest.fixture
def save_server(tmp_path):
    from engine_bridge.server import BridgeServer, ServerConfig
    from tests.helpers import random_world
    from worldsim.runtime import World

    world = World.load(str(random_world(tmp_path / "world")))
    addr = f"tcp://127.0.0.1:{_free_port()}"
    saves = tmp_path / "saves"
    srv = BridgeServer(world, ServerConfig(bind=addr, save_dir=str(saves)))
    srv.start()
    try:
        yield srv, addr, world, saves
    finally:
        srv.stop()


def _play(exe: Path, addr: str, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    p = subprocess.run([str(exe), "--addr", addr, "--out", str(out), "--timeout-ms", "30000", *args],
                       capture_output=True, text=True, timeout=400)
    return p, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def test_cpp_client_saves_and_loads_on_the_server(cpp_client, save_server, tmp_path):
    srv, addr, world, saves = save_server
    H, W = world.resolution

    def frames(path: Path) -> np.ndarray:
        return np.fromfile(path, np.uint8).reshape(-1, H, W, 3)

    p, log = _play(cpp_client, addr, tmp_path / "whole.rgb", "--ticks", "15", "--seed", "3")
    assert p.returncode == 0, log
    p, log = _play(cpp_client, addr, tmp_path / "first.rgb", "--ticks", "10", "--seed", "3", "--save", "slot-1")
    assert p.returncode == 0, log
    m = re.search(r"^saved: slot-1 \(tick 10, (\d+) bytes\)$", p.stdout, re.M)
    assert m, log
    assert (saves / "slot-1.wsnap").stat().st_size == int(m.group(1))

    # a new connection (another process) goes on from the save: the frames an uninterrupted run played
    p, log = _play(cpp_client, addr, tmp_path / "rest.rgb", "--ticks", "5", "--load", "slot-1")
    assert p.returncode == 0, log
    assert "loaded from save 'slot-1'" in p.stdout and "tick 10" in p.stdout, log
    whole = frames(tmp_path / "whole.rgb")
    np.testing.assert_array_equal(frames(tmp_path / "first.rgb"), whole[:10])
    np.testing.assert_array_equal(frames(tmp_path / "rest.rgb"), whole[10:])

    # with --seed: a branch from the same tick
    p, log = _play(cpp_client, addr, tmp_path / "branch.rgb", "--ticks", "5", "--load", "slot-1", "--seed", "9")
    assert p.returncode == 0, log
    assert frames(tmp_path / "branch.rgb").shape == (5, H, W, 3)
    assert not np.array_equal(frames(tmp_path / "branch.rgb"), whole[10:])

    # realtime sessions load and save too
    p, log = _play(cpp_client, addr, tmp_path / "rt.rgb", "--realtime", "--ticks", "4", "--load", "slot-1",
                   "--save", "slot-2")
    assert p.returncode == 0, log
    m = re.search(r"^saved: slot-2 \(tick (\d+), \d+ bytes\)$", p.stdout, re.M)
    assert m and int(m.group(1)) >= 14, log
    assert (saves / "slot-2.wsnap").is_file()
    assert srv.stats["errors_sent"] == 0, srv.stats
    assert not srv.sessions, srv.sessions

    # an unknown save: the server's error, exit 3, and the server goes on
    p, log = _play(cpp_client, addr, tmp_path / "x.rgb", "--ticks", "2", "--load", "nope")
    assert p.returncode == 3 and "UNKNOWN_SNAPSHOT" in p.stderr and "nope" in p.stderr, log
    p, log = _play(cpp_client, addr, tmp_path / "y.rgb", "--ticks", "2", "--load", "slot-1")
    assert p.returncode == 0, log

    # the save menu: list, delete, list again
    def saves_cmd(*args: str) -> tuple[subprocess.CompletedProcess, str]:
        q = subprocess.run([str(cpp_client), "--addr", addr, "--timeout-ms", "30000", *args], capture_output=True,
                           text=True, timeout=400)
        return q, f"exit {q.returncode}\nstdout:\n{q.stdout}\nstderr:\n{q.stderr}"

    p, log = saves_cmd("--list-saves")
    assert p.returncode == 0, log
    lines = [x for x in p.stdout.splitlines() if x.startswith("save: ")]
    assert [x.split()[1] for x in lines] == ["slot-1", "slot-2"], log
    assert re.fullmatch(r"save: slot-1 tick=10 seed=3 views=\d+ bytes=\d+ saved=\S+\+00:00", lines[0]), log
    assert p.stdout.strip().splitlines()[-1] == "ok saves=2", log
    p, log = saves_cmd("--delete-save", "slot-1")
    assert p.returncode == 0 and "ok deleted=slot-1" in p.stdout and not (saves / "slot-1.wsnap").exists(), log
    p, log = saves_cmd("--delete-save", "slot-1")
    assert p.returncode == 3 and "UNKNOWN_SNAPSHOT" in p.stderr, log
    p, log = saves_cmd("--list-saves")
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "ok saves=1", log


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "x" * 65])
def test_cpp_client_refuses_a_save_name_that_is_a_path(cpp_client, tmp_path, name):
    # checked before anything connects: no server needed
    for flag in ("--save", "--load"):
        p = subprocess.run([str(cpp_client), "--addr", f"tcp://127.0.0.1:{_free_port()}", flag, name],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert p.returncode == 1, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        assert f"{flag}: a save's name is 1-64 letters" in p.stderr and "not a path" in p.stderr, p.stderr
    p = subprocess.run([str(cpp_client), "--record", "f.rgb", "--save", "ok"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 1 and "play mode options cannot be used with --record: --save" in p.stderr, p.stderr


@pytest.mark.parametrize("args, want", [
    (["--list-saves", "--ticks", "3"], "--list-saves talks to the server's saves only; it takes no --ticks"),
    (["--delete-save", "a", "--realtime"], "it takes no --realtime"),
    (["--list-saves", "--load", "a"], "it takes no --load"),
    (["--list-saves", "--delete-save", "a"], "one at a time"),
])
def test_cpp_client_save_menu_takes_no_play_options(cpp_client, tmp_path, args, want):
    p = subprocess.run([str(cpp_client), "--addr", f"tcp://127.0.0.1:{_free_port()}", *args], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1 and want in p.stderr, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"


def test_cpp_client_save_needs_a_server_with_a_save_dir(cpp_client, server, tmp_path):
    srv, addr, _ = server
    p, log = _play(cpp_client, addr, tmp_path / "f.rgb", "--ticks", "3", "--save", "s")
    assert p.returncode == 4, log
    assert "does not offer the 'save' capability" in p.stderr and "--save-dir" in p.stderr, log
    assert srv.stats["frames_sent"] == 0 and not srv.sessions  # refused before a session was opened
    p, log = _play(cpp_client, addr, tmp_path / "f.rgb", "--list-saves")
    assert p.returncode == 1 and "takes no --out" in p.stderr, log
    q = subprocess.run([str(cpp_client), "--addr", addr, "--list-saves", "--timeout-ms", "30000"], capture_output=True,
                       text=True, timeout=400)
    assert q.returncode == 4 and "does not offer the 'save' capability" in q.stderr and "--save-dir" in q.stderr, q.stderr
