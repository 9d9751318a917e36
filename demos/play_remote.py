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
import sys

from engine_bridge.spawn import ServerProcess
from worldsim.play.player import PlayConfig, play


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

    srv = ServerProcess(args.world) if args.spawn_server else None
    try:
        r = play(PlayConfig(connect=srv.addr if srv else args.connect, seed=args.seed, headless=args.headless,
                            ticks=args.ticks, record=args.record))
    finally:
        if srv is not None:
            srv.stop()
    print(f"played {r['ticks']} ticks over {r['source']}: input→frame p50 {r['latency_p50_ms']} ms, "
          f"p99 {r['latency_p99_ms']} ms, dropped {r['dropped']}, sound chunks queued {r['audio_queued']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
