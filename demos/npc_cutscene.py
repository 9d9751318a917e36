"""An engine-side NPC cutscene over the bridge, as a game script would drive it.

    worldsim serve &                      # or: python demos/npc_cutscene.py --spawn-server
    python demos/npc_cutscene.py --out out/npc_demo

Three NPC sessions are opened on one connection; each tick the script decides every NPC's
action (here a small state machine per NPC, the place an engine's behaviour tree would sit),
sends all STEPs together so the server batches them, and keeps each NPC's frames and sound.
The result is one MP4 + WAV per NPC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engine_bridge.client import BridgeClient
from engine_bridge.cutscene import write_npc_media


def patrol(tick: int) -> dict:
    """Walk, then turn around, then walk back: the classic guard."""
    phase = (tick // 30) % 3
    return {"keys": ["forward"]} if phase != 1 else {"keys": [], "mouse": [6.0, 0.0]}


def ambush(tick: int) -> dict:
    """Wait, swing round and open fire."""
    if tick < 20:
        return {"keys": []}
    if tick < 40:
        return {"keys": ["turn_left"]}
    return {"keys": ["attack"]}


def door_runner(tick: int) -> dict:
    return {"keys": ["forward", "run"]} if tick % 40 < 32 else {"keys": ["use"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", default="tcp://127.0.0.1:5555")
    ap.add_argument("--spawn-server", action="store_true", help="start a server with the default world in this process")
    ap.add_argument("--world", default="default")
    ap.add_argument("--ticks", type=int, default=120)
    ap.add_argument("--out", type=Path, default=Path("out/npc_demo"))
    args = ap.parse_args()

    srv = None
    if args.spawn_server:
        from engine_bridge.server import BridgeServer, ServerConfig
        from worldsim.runtime import World

        srv = BridgeServer(World.load(args.world), ServerConfig(bind="tcp://127.0.0.1:*")).start()
        args.connect = srv.endpoint
    brains = {"guard": patrol, "ambusher": ambush, "runner": door_runner}
    try:
        with BridgeClient(args.connect, timeout_ms=10000) as client:
            world = client.world
            sids = {name: client.open(mode="lockstep", seed=i) for i, name in enumerate(brains)}
            frames = {n: [] for n in brains}
            sound = {n: [] for n in brains}
            for t in range(args.ticks):
                obs = client.step_many({sids[n]: brain(t) for n, brain in brains.items()})
                for n in brains:
                    frames[n].append(obs[sids[n]].frame)
                    if obs[sids[n]].audio is not None:
                        sound[n].append(obs[sids[n]].audio)
            for sid in sids.values():
                client.close_session(sid)
    finally:
        if srv is not None:
            srv.stop()
    for n in brains:
        files = write_npc_media(args.out, n, np.stack(frames[n]), np.concatenate(sound[n]) if sound[n] else None, world)
        print(f"{n}: {', '.join(files)} ({len(frames[n])} frames)")


if __name__ == "__main__":
    main()
