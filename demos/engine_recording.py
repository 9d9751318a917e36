"""An engine recording its own gameplay through the bridge, as a game would feed worldsim.

    worldsim record bridge --out data/arena &        # or: python demos/engine_recording.py --spawn-server
    python demos/engine_recording.py --ticks 2000
    worldsim train --config tiny --data data/arena --out runs/arena   # then: worldsim play --world runs/arena

The "engine" here is a toy top-down arena drawn with numpy at 128×128 (the server stores
64×64): a bot drives a ship with forward / back / turn_left / turn_right / fire, bounces off
walls with a thud, and its gun beeps. Each tick the engine sends what its player saw and
did — the frame shown before the action, the action, that tick's stereo sound and the ship's
pose — exactly the REC_STEP an engine plugin would send (engine_bridge/PROTOCOL.md,
Recording). The bot's policy stands where a player's input or an NPC brain would be.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from engine_bridge.client import BridgeClient

TICK_RATE, SAMPLE_RATE, SIZE = 17.5, 22050, 128
SAMPLES = int(SAMPLE_RATE / TICK_RATE)  # 1,260 stereo samples a tick: what configs/tiny.yaml's audio codec takes
SCHEMA = {"buttons": ["forward", "back", "turn_left", "turn_right", "fire"], "axes": [],
          "groups": [["forward", "back"], ["turn_left", "turn_right"]]}


class Arena:
    """The toy game: state, one step of its rules, and what it draws and plays."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.x, self.y, self.yaw = SIZE / 2, SIZE / 2, 0.0  # yaw in degrees, 0 = +x
        self.pillars = self.rng.uniform(20, SIZE - 20, (4, 2))
        self.bumped = self.fired = False
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        self.floor = np.stack([40 + xx // 4, 50 + yy // 5, 70 + 0 * xx], -1).astype(np.uint8)  # (H, W, 3)

    def step(self, keys: set[str]) -> None:
        self.yaw += 12.0 * (("turn_left" in keys) - ("turn_right" in keys))
        speed = 3.0 * (("forward" in keys) - 0.6 * ("back" in keys))
        nx = self.x + speed * math.cos(math.radians(self.yaw))
        ny = self.y - speed * math.sin(math.radians(self.yaw))
        self.bumped = not (6 <= nx <= SIZE - 6 and 6 <= ny <= SIZE - 6)
        if self.bumped:  # bounce: turn round, a little askew
            self.yaw += 180.0 + self.rng.uniform(-40, 40)
        else:
            self.x, self.y = nx, ny
        self.fired = "fire" in keys

    def frame(self) -> np.ndarray:
        f = self.floor.copy()
        f[:4], f[-4:], f[:, :4], f[:, -4:] = (120, 110, 90), (120, 110, 90), (120, 110, 90), (120, 110, 90)
        for px, py in self.pillars:
            f[int(py) - 5:int(py) + 5, int(px) - 5:int(px) + 5] = (200, 60, 50)
        ix, iy = int(self.x), int(self.y)
        f[iy - 3:iy + 4, ix - 3:ix + 4] = (240, 240, 90)  # the ship
        for r in range(4, 10):  # its nose, pointing along yaw
            hx = int(self.x + r * math.cos(math.radians(self.yaw)))
            hy = int(self.y - r * math.sin(math.radians(self.yaw)))
            if 0 <= hx < SIZE and 0 <= hy < SIZE:
                f[hy, hx] = (255, 255, 255)
        if self.fired:  # muzzle flash
            f[max(iy - 8, 0):iy + 9, max(ix - 8, 0):ix + 9] //= 2
            f[max(iy - 8, 0):iy + 9, max(ix - 8, 0):ix + 9] += 120
        return f

    def sound(self) -> np.ndarray:
        t = np.arange(SAMPLES) / SAMPLE_RATE
        s = np.zeros(SAMPLES)
        if self.fired:  # a beep, louder on the side the ship faces
            s += 0.4 * np.sin(2 * math.pi * 880 * t) * np.exp(-t * 30)
        if self.bumped:  # a thud
            s += 0.6 * self.rng.standard_normal(SAMPLES) * np.exp(-t * 60)
        pan = 0.5 + 0.4 * math.cos(math.radians(self.yaw))
        return (np.stack([s * (1 - pan), s * pan], 1) * 32767).clip(-32768, 32767).astype(np.int16)  # (S, 2)

    def pose(self) -> list[float]:
        return [self.x, self.y, 0.0, self.yaw % 360, 0.0]


def bot(t: int, rng: np.random.Generator, held: set[str]) -> set[str]:
    """Drive mostly forward, change turning every so often, fire in bursts."""
    keys = {"forward"} if rng.random() < 0.8 else set()
    if t % 12 == 0:
        held.clear()
        held.update(rng.choice([set(), {"turn_left"}, {"turn_right"}], p=[0.5, 0.25, 0.25]))
    if (t // 25) % 4 == 3:
        keys.add("fire")
    return keys | held


def record(addr: str, ticks: int, seed: int = 0) -> dict:
    game, rng, held = Arena(seed), np.random.default_rng(seed + 1), set()
    audio = {"sample_rate": SAMPLE_RATE, "channels": 2, "samples_per_step": SAMPLES}
    with BridgeClient(addr, timeout_ms=10000) as c:
        # the recording closes on leaving the block, also when the engine fails (ended_by: error)
        with c.recording(SCHEMA, TICK_RATE, audio=audio, fields=("pose",),
                         meta={"source": "arena-demo", "map": "arena"}) as rec:
            sound = np.zeros((SAMPLES, 2), np.int16)  # what was heard with the first frame
            for t in range(ticks):
                keys = bot(t, rng, held)
                # frames[t] and audio[t]: what the player saw and heard before choosing actions[t]
                rec.step(game.frame(), {"keys": sorted(keys)}, audio=sound, pose=game.pose())
                game.step(keys)
                sound = game.sound()
            return rec.close(ended_by="demo_end")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", default="tcp://127.0.0.1:5560", help="a running `worldsim record bridge`")
    ap.add_argument("--spawn-server", action="store_true", help="start `worldsim record bridge --out OUT` for this run")
    ap.add_argument("--out", type=Path, default=Path("data/arena"), help="where a spawned server writes")
    ap.add_argument("--ticks", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.ticks < 1:
        ap.error("--ticks must be ≥ 1")
    if args.spawn_server:
        from engine_bridge.spawn import ServerProcess

        with ServerProcess(command=("record", "bridge", "--out", str(args.out))) as srv:
            done = record(srv.addr, args.ticks, args.seed)
    else:
        done = record(args.connect, args.ticks, args.seed)
    print(f"recorded {done['steps']} ticks as {', '.join(done['episodes'])} in {done['out']}")
    print(f"next: worldsim train --config tiny --data {done['out']} --out runs/arena")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
