"""A scripted explorer that covers a DOOM map the way a curious player would.

Random jitter stays near the spawn point and makes poor world-model data. This policy
walks toward open space it has not visited (depth buffer + a visit map of 64-unit
cells), steers with mouse deltas, presses USE at walls (doors), fires in bursts,
strafes, backs out of dead ends when stuck, and now and then turns a slow full circle
in place (the look-away-and-back trajectories that scene memory is trained on).
Everything random comes from one seeded generator, so a seed fixes the trajectory.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from worldsim.actions import VIZDOOM_SCHEMA, Action

B = {name: i for i, name in enumerate(VIZDOOM_SCHEMA.buttons)}
N_SECTORS = 8
FOV_DEG = 90.0


class Explorer:
    """`act(pose, depth)` → Action, one per step. Pose is (x, y, z, yaw°, pitch°); depth (H, W) uint8."""

    def __init__(self, seed: int, frame_skip: int = 2):
        self.rng = np.random.default_rng(seed)
        self.k = frame_skip
        self.visits: dict[tuple[int, int], int] = {}
        self.mode = "walk"
        self.mode_left = 0
        self.turn_dir = 1.0
        self.history: deque[np.ndarray] = deque(maxlen=12)
        self.mouse = 0.0  # smoothed mouse_dx, deg/step
        self.attack_left = 0
        self.use_cooldown = 0
        self.keyboard_turn = False
        self.target_yaw: float | None = None
        self.heading_left = 0

    # ----- helpers -------------------------------------------------------------------
    def _choose_heading(self, x: float, y: float, yaw: float, sectors: np.ndarray) -> float:
        """An absolute yaw toward open, little-visited space; directions out of view count on novelty alone."""
        open_ = sectors / max(float(sectors.max()), 1e-6)  # (N_SECTORS,) 0..1
        offsets = [FOV_DEG / 2 - (s + 0.5) * FOV_DEG / N_SECTORS for s in range(N_SECTORS)]  # + = left
        cand = [(yaw + o) % 360.0 for o in offsets] + [(yaw + o) % 360.0 for o in (90.0, 180.0, -90.0)]
        nov = np.array([self._novelty_dir(x, y, c) for c in cand])
        score = np.concatenate([open_ + 1.2 * nov[:N_SECTORS], 0.35 + 1.2 * nov[N_SECTORS:]])
        score += 0.25 * self.rng.standard_normal(len(score))
        return float(cand[int(np.argmax(score))])

    def _novelty_dir(self, x: float, y: float, yaw_deg: float) -> float:
        ang = math.radians(yaw_deg)
        v = 0.0
        for dist in (128.0, 256.0, 384.0):
            c = (int((x + dist * math.cos(ang)) // 64), int((y + dist * math.sin(ang)) // 64))
            v += 1.0 / (1.0 + self.visits.get(c, 0))
        return v / 3

    def _start(self, mode: str, steps: int) -> None:
        self.mode, self.mode_left = mode, steps

    # ----- policy --------------------------------------------------------------------
    def act(self, pose: np.ndarray, depth: np.ndarray | None) -> Action:
        rng = self.rng
        x, y, yaw = float(pose[0]), float(pose[1]), float(pose[3])
        cell = (int(x // 64), int(y // 64))
        self.visits[cell] = self.visits.get(cell, 0) + 1
        self.history.append(pose[:2].copy())
        buttons = np.zeros(VIZDOOM_SCHEMA.num_buttons, np.uint8)
        mouse_dx, mouse_dy = 0.0, 0.0

        if depth is not None:
            depth = depth[::2, ::2]  # a quarter of the pixels is plenty to steer by
            h, w = depth.shape
            band = depth[int(h * 0.42):int(h * 0.6)]  # (rows, W): the walls at eye level
            cols = band.min(axis=0).astype(np.float32)  # (W,)
            sectors = cols[: w - w % N_SECTORS].reshape(N_SECTORS, -1).mean(axis=1)  # (N_SECTORS,) raw depth
            front = float(cols[int(w * 0.4):int(w * 0.6)].min())
        else:
            sectors = np.full(N_SECTORS, 20.0)
            front = 20.0

        stuck = (len(self.history) == self.history.maxlen and self.mode == "walk"
                 and float(np.linalg.norm(self.history[-1] - self.history[0])) < 12.0)
        if self.mode_left <= 0 or stuck:
            if stuck:
                self.turn_dir = float(rng.choice([-1.0, 1.0]))
                self._start("backoff", int(rng.integers(6, 16)))
                self.history.clear()
            elif self.mode != "walk":
                self._start("walk", int(rng.integers(20, 80)))
                self.target_yaw = None
            else:
                r = rng.random()
                if r < 0.04:
                    self.turn_dir = float(rng.choice([-1.0, 1.0]))
                    self._start("spin", int(round(360 / 12)))  # slow full circle at 12 deg/step
                elif r < 0.16:
                    self.turn_dir = float(rng.choice([-1.0, 1.0]))
                    self._start("strafe", int(rng.integers(5, 16)))
                elif r < 0.19:
                    self._start("pause", int(rng.integers(3, 10)))
                else:
                    self._start("walk", int(rng.integers(20, 80)))
                self.keyboard_turn = rng.random() < 0.2
        self.mode_left -= 1

        if self.mode == "walk":
            self.heading_left -= 1
            if front < 3.0:  # touching a wall: try it as a door, then head somewhere open
                if self.use_cooldown <= 0:
                    buttons[B["use"]] = 1
                    self.use_cooldown = 12
                if self.heading_left > 3:
                    self.heading_left = 3
            if self.target_yaw is None or self.heading_left <= 0:
                self.target_yaw = self._choose_heading(x, y, yaw, sectors)
                self.heading_left = int(rng.integers(12, 40))
            diff = (self.target_yaw - yaw + 180.0) % 360.0 - 180.0  # + = target is to the left
            target = float(np.clip(-0.35 * diff, -14.0, 14.0))
            self.mouse = 0.5 * self.mouse + 0.5 * target + float(rng.normal(0, 0.4))
            mouse_dx = self.mouse
            if abs(diff) < 50 and front >= 3.0:
                buttons[B["forward"]] = 1
                if rng.random() < 0.3:
                    buttons[B["run"]] = 1
        elif self.mode == "backoff":
            buttons[B["back"]] = 1
            mouse_dx = self.turn_dir * float(rng.uniform(6, 14))
        elif self.mode == "spin":
            mouse_dx = self.turn_dir * 12.0
        elif self.mode == "strafe":
            buttons[B["strafe_right" if self.turn_dir > 0 else "strafe_left"]] = 1
            mouse_dx = float(rng.normal(0, 1.5))
        # "pause": no input

        if self.keyboard_turn and self.mode in ("walk", "backoff") and abs(mouse_dx) > 4:
            # Keyboard turning instead of the mouse, so the data has both (about 5.6 deg/tic).
            buttons[B["turn_right" if mouse_dx > 0 else "turn_left"]] = 1
            mouse_dx = 0.0

        if self.attack_left > 0:
            buttons[B["attack"]] = 1
            self.attack_left -= 1
        elif rng.random() < 0.025:
            self.attack_left = int(rng.integers(1, 4))
        if self.use_cooldown > 0:
            self.use_cooldown -= 1
        elif rng.random() < 0.01:
            buttons[B["use"]] = 1
            self.use_cooldown = 8
        # Keep the view near level: small looks that return to the horizon.
        pitch = float(pose[4]) if len(pose) > 4 else 0.0
        if rng.random() < 0.03:
            mouse_dy = float(rng.normal(0, 3.0))
        else:
            mouse_dy = float(np.clip(-0.3 * pitch, -3, 3)) if abs(pitch) > 0.5 else 0.0

        axes = np.array([mouse_dx, mouse_dy], np.float32)
        return Action(buttons, axes)
