"""The C++ reference client (engine_bridge/clients/cpp) against a live bridge server.

Builds `worldsim_client` with CMake into a temporary directory, serves a tiny random world on a
free loopback port and runs 100 lockstep ticks. A missing toolchain or missing Debian headers
FAIL this test (CI installs them): cmake g++ pkg-config libzmq3-dev cppzmq-dev libmsgpack-cxx-dev.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

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
