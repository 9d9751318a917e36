"""Play a world served over the bridge, as a remote player would.

    worldsim serve --bind tcp://0.0.0.0:5555 &          # on the machine with the model
    python demos/play_remote.py --connect tcp://HOST:5555

    python demos/play_remote.py --spawn-server          # both on this machine (server in its own process)
    python demos/play_remote.py --spawn-server --headless --ticks 60 --record out/remote.mp4

The window, controls, HUD and recording are those of `worldsim play` (press F1 for the HUD:
its tick time includes the network round trip). With --spawn-server the model runs in a
`worldsim serve` process of its own, so it gets a CPU core while this process draws and
plays the sound.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

from engine_bridge.client import BridgeClient, BridgeError
from worldsim.play.player import PlayConfig, play


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(world: str, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """`worldsim serve` on a free loopback port; returns once it answers a PING."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "serve", "--world", world, "--bind", addr])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worldsim serve exited with status {proc.returncode}")
        try:
            with BridgeClient(addr, timeout_ms=500, retries=0) as c:
                c.ping()
            return proc, addr
        except BridgeError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"worldsim serve did not answer on {addr} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", default="tcp://127.0.0.1:5555", help="the server's address")
    ap.add_argument("--spawn-server", action="store_true", help="start `worldsim serve` in a subprocess first")
    ap.add_argument("--world", default="default", help="world for --spawn-server")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--headless", action="store_true")
    ap.add_argument("--ticks", type=int)
    ap.add_argument("--record", metavar="OUT.mp4")
    args = ap.parse_args(argv)

    proc = None
    if args.spawn_server:
        proc, args.connect = spawn_server(args.world)
    try:
        r = play(PlayConfig(connect=args.connect, seed=args.seed, headless=args.headless, ticks=args.ticks,
                            record=args.record))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    print(f"played {r['ticks']} ticks over {r['source']}: input→frame p50 {r['latency_p50_ms']} ms, "
          f"p99 {r['latency_p99_ms']} ms, dropped {r['dropped']}, sound chunks queued {r['audio_queued']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
