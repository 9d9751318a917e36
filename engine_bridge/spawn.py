"""Start `worldsim serve` (or `worldsim record bridge`) as a process of its own and wait until it answers.

Used by the bridge benchmark and the demos: the server gets its own CPU core (one torch
thread), as an engine deployment would run it. Its log goes to a temporary file rather than
a pipe, so a chatty server can never block on a full pipe; the tail is shown if it dies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running `worldsim serve` on a loopback port; ``addr`` is its endpoint. Use as a context manager.
    ``command`` replaces ``serve --world WORLD``, e.g. ``("record", "bridge", "--out", "data/x")``."""

    def __init__(self, world: str = "default", args: Sequence[str] = (), timeout_s: float = 120.0,
                 command: Sequence[str] | None = None):
        from engine_bridge.client import BridgeClient, BridgeError

        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="33554432", MALLOC_TRIM_THRESHOLD_="1073741824")
        cmd = list(command) if command is not None else ["serve", "--world", world]
        self.what = "worldsim " + (" ".join(cmd[:2]) if command is not None else "serve")
        self.proc = subprocess.Popen([sys.executable, "-m", "worldsim.cli", *cmd, "--bind", self.addr, *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited with status {self.proc.returncode}: {self.tail()}")
            try:
                with BridgeClient(self.addr, timeout_ms=500, retries=0) as c:
                    c.ping()
                return
            except BridgeError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.what} did not answer on {self.addr} within {timeout_s:.0f} s")
                time.sleep(0.2)

    def tail(self, n: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
