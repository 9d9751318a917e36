"""A headless ViZDoom game wired to worldsim's ViZDoom action schema.

Sound needs Debian's ``libopenal1`` and the game argument ``+snd_efx 0``: without the
library ViZDoom's audio buffer is silently all zeros, without the argument it can crash.
"""

from __future__ import annotations

import ctypes.util
import os
from dataclasses import dataclass

import cv2
import numpy as np

from worldsim.actions import Action
from worldsim.errors import WorldsimError

TICS_PER_SECOND = 35
WADS = ("freedoom2", "freedoom1")
SAMPLE_RATES = {11025: "SR_11025", 22050: "SR_22050", 44100: "SR_44100"}
# Order of ViZDoom buttons; the first nine follow VIZDOOM_SCHEMA.buttons.
_BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "MOVE_LEFT", "MOVE_RIGHT", "TURN_LEFT", "TURN_RIGHT", "ATTACK", "USE",
            "SPEED", "TURN_LEFT_RIGHT_DELTA", "LOOK_UP_DOWN_DELTA")
_VARIABLES = ("POSITION_X", "POSITION_Y", "POSITION_Z", "ANGLE", "PITCH")


def _downscale(img: np.ndarray, r: int) -> np.ndarray:
    """Anti-aliased resize to (r, r): halve with pyrDown while the result stays about r or larger, then bilinear.

    Close to INTER_AREA in quality at a quarter of its cost for 160×120 → 64×64.
    """
    while img.shape[0] >= 2 * r * 0.9 and img.shape[1] >= 2 * r:
        img = cv2.pyrDown(img)
    return cv2.resize(img, (r, r), interpolation=cv2.INTER_LINEAR)


class DoomSetupError(WorldsimError):
    """ViZDoom (or its sound library) is missing or misconfigured."""


def check_openal() -> None:
    """Fail loudly instead of recording silence when libopenal1 is absent."""
    if ctypes.util.find_library("openal") is None:
        raise DoomSetupError("libopenal (Debian package libopenal1) is not installed: ViZDoom would record silent "
                             "audio. Install it with `apt-get install libopenal1`, or pass --no-audio.")


@dataclass
class DoomConfig:
    """How to run the game. `resolution` is the stored (square) frame size."""

    wad: str = "freedoom2"
    map: str = "MAP01"
    frame_skip: int = 2
    resolution: int = 64
    audio: bool = True
    sample_rate: int = 22050
    stereo: bool = True
    depth: bool = True
    skill: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.wad not in WADS:
            raise ValueError(f"unknown WAD {self.wad!r}; choose from {list(WADS)}")
        if self.frame_skip < 1:
            raise ValueError("frame skip must be ≥ 1")
        if not 16 <= self.resolution <= 480:
            raise ValueError("resolution must be between 16 and 480 pixels")
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample rate must be one of {sorted(SAMPLE_RATES)}")
        if not 1 <= self.skill <= 5:
            raise ValueError("skill must be 1..5")

    @property
    def tick_rate(self) -> float:
        return TICS_PER_SECOND / self.frame_skip

    @property
    def samples_per_step(self) -> int:
        return self.sample_rate * self.frame_skip // TICS_PER_SECOND


def wad_maps(wad_path: str) -> list[str]:
    """Map names in a WAD, read from its lump directory (ViZDoom hangs on a map that does not exist)."""
    import re
    import struct

    with open(wad_path, "rb") as f:
        magic, n, offset = struct.unpack("<4sii", f.read(12))
        if magic not in (b"IWAD", b"PWAD"):
            raise DoomSetupError(f"{wad_path}: not a WAD file")
        f.seek(offset)
        directory = f.read(16 * n)
    names = [directory[i * 16 + 8:i * 16 + 16].rstrip(b"\0").decode("ascii", "replace") for i in range(n)]
    return sorted(x for x in names if re.fullmatch(r"MAP\d\d|E\dM\d", x))


class DoomGame:
    """One ViZDoom instance. `observe()` returns frame, audio, pose, depth at the current step."""

    def __init__(self, cfg: DoomConfig):
        try:
            import vizdoom as vzd
        except ImportError as e:  # pragma: no cover - vizdoom is a hard dependency
            raise DoomSetupError(f"vizdoom is not installed ({e})") from None
        if cfg.audio:
            check_openal()
        self.cfg = cfg
        self.vzd = vzd
        wad = os.path.join(os.path.dirname(vzd.__file__), f"{cfg.wad}.wad")
        self.maps = wad_maps(wad)
        self._check_map(cfg.map)
        g = vzd.DoomGame()
        g.set_doom_game_path(wad)
        g.set_doom_map(cfg.map)
        render = (vzd.ScreenResolution.RES_160X120 if cfg.resolution <= 64 else
                  vzd.ScreenResolution.RES_320X240 if cfg.resolution <= 128 else vzd.ScreenResolution.RES_640X480)
        g.set_screen_resolution(render)
        g.set_screen_format(vzd.ScreenFormat.RGB24)
        g.set_window_visible(False)
        g.set_render_hud(False)
        g.set_render_messages(False)
        g.set_render_crosshair(False)
        g.set_render_weapon(True)
        g.set_depth_buffer_enabled(cfg.depth)
        g.set_doom_skill(cfg.skill)
        g.set_episode_timeout(0)
        g.set_available_buttons([getattr(vzd.Button, b) for b in _BUTTONS])
        g.set_available_game_variables([getattr(vzd.GameVariable, v) for v in _VARIABLES])
        if cfg.audio:
            g.set_audio_buffer_enabled(True)
            g.set_audio_sampling_rate(getattr(vzd.SamplingRate, SAMPLE_RATES[cfg.sample_rate]))
            g.set_audio_buffer_size(cfg.frame_skip)
            g.add_game_args("+snd_efx 0")
        g.set_mode(vzd.Mode.PLAYER)
        g.set_seed(cfg.seed)
        try:
            g.init()
        except Exception as e:
            raise DoomSetupError(f"ViZDoom failed to start map {cfg.map} of {cfg.wad}: {e}") from None
        self.game = g
        self._act = [0.0] * len(_BUTTONS)

    def _check_map(self, map: str) -> None:
        if map not in self.maps:
            raise DoomSetupError(f"{self.cfg.wad} has no map {map!r}; it has {', '.join(self.maps)}")

    def new_episode(self, seed: int | None = None, map: str | None = None) -> None:
        if seed is not None:
            self.game.set_seed(seed)
        if map is not None and map != self.cfg.map:
            self._check_map(map)
            self.game.set_doom_map(map)
            self.cfg.map = map
        self.game.new_episode()

    @property
    def last_reward(self) -> float:
        return float(self.game.get_last_reward())

    @property
    def finished(self) -> bool:
        return self.game.is_episode_finished()

    def act(self, action: Action) -> None:
        """Apply one step (frame_skip tics) of the action. Mouse axes are deg/step, spread over the tics."""
        k = self.cfg.frame_skip
        a = self._act
        for i in range(9):
            a[i] = float(action.buttons[i])
        # ViZDoom applies a delta button on every tic of the step; positive TURN delta turns right,
        # positive LOOK delta looks up (so mouse_dy, + = down, is negated).
        a[9] = float(action.axes[0]) / k
        a[10] = -float(action.axes[1]) / k
        self.game.make_action(a, k)

    def observe(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(frame (R,R,3) uint8, audio (S,C) int16 | None, pose (5,) float32, depth (R,R) uint8 | None)."""
        st = self.game.get_state()
        r = self.cfg.resolution
        frame = _downscale(st.screen_buffer, r)
        audio = None
        if self.cfg.audio:
            audio = st.audio_buffer
            if audio is None:
                audio = np.zeros((self.cfg.samples_per_step, 2), np.int16)
            audio = np.asarray(audio, np.int16)
            if not self.cfg.stereo:
                audio = audio.astype(np.int32).mean(axis=1, keepdims=True).astype(np.int16)
        pose = np.asarray(st.game_variables, np.float32)
        depth = None
        if self.cfg.depth and st.depth_buffer is not None:
            self._depth_full = st.depth_buffer
            depth = cv2.resize(st.depth_buffer, (r, r), interpolation=cv2.INTER_NEAREST)
        return frame, audio, pose, depth

    @property
    def full_depth(self) -> np.ndarray | None:
        """The last observed depth buffer at render resolution (the explorer looks at it)."""
        return getattr(self, "_depth_full", None)

    def close(self) -> None:
        self.game.close()

