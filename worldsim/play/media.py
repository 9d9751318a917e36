"""Writing what a world shows: MP4 (H.264 video + AAC sound muxed) and WAV.

:class:`Mp4Writer` streams: each tick's frame and sound go to the encoder as they are
made, so an hour-long recording never sits in memory. Frames are upscaled with nearest
neighbour (64×64 stays crisp in any player) and audio timestamps are counted in samples,
so sound and picture stay in sync however long the recording runs.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

from worldsim.errors import WorldsimError


class Mp4Writer:
    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], scale: int = 4,
                 audio_spec: dict[str, int] | None = None, crf: int = 18):
        import av

        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
            raise WorldsimError(f"{self.path}: recordings are MP4 files (name them *.mp4)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorldsimError(f"{self.path}: cannot create directory {self.path.parent} ({e})") from None
        self.scale = max(1, int(scale))
        h, w = size[0] * self.scale, size[1] * self.scale
        self._tmp = self.path.with_name(self.path.name + ".partial.mp4")  # renamed on close: no half files
        self._out = av.open(str(self._tmp), mode="w")
        self._v = self._out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self._v.width, self._v.height, self._v.pix_fmt = w + (w % 2), h + (h % 2), "yuv420p"
        self._v.options = {"crf": str(crf)}
        self._a = None
        self._samples = 0
        if audio_spec:
            self.rate, self.channels = int(audio_spec["sample_rate"]), int(audio_spec["channels"])
            self._a = self._out.add_stream("aac", rate=self.rate)
            self._a.layout = "stereo" if self.channels == 2 else "mono"
        self.frames = 0

    def add(self, frame: np.ndarray, audio: np.ndarray | None = None) -> None:
        import av

        f = np.asarray(frame, np.uint8)
        if self.scale > 1:
            f = f.repeat(self.scale, axis=0).repeat(self.scale, axis=1)  # (H*s, W*s, 3)
        if f.shape[0] != self._v.height or f.shape[1] != self._v.width:
            f = np.pad(f, ((0, self._v.height - f.shape[0]), (0, self._v.width - f.shape[1]), (0, 0)))
        for pkt in self._v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
            self._out.mux(pkt)
        self.frames += 1
        if self._a is not None and audio is not None:
            a = np.asarray(audio, np.int16).reshape(-1, self.channels)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(a.reshape(1, -1)), format="s16",
                                            layout=self._a.layout.name)
            af.sample_rate, af.pts = self.rate, self._samples
            self._samples += len(a)
            for pkt in self._a.encode(af):
                self._out.mux(pkt)

    def close(self) -> Path:
        if self._out is None:
            return self.path
        for st in (self._v, self._a):
            if st is not None:
                for pkt in st.encode():
                    self._out.mux(pkt)
        self._out.close()
        self._out = None
        if self.frames == 0:  # an empty container is not a video: leave nothing behind
            self._tmp.unlink(missing_ok=True)
            raise WorldsimError(f"{self.path}: nothing was recorded (no frames)")
        self._tmp.replace(self.path)
        return self.path

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # do not hide the error that stopped the recording behind "nothing was recorded"
            try:
                self.close()
            except WorldsimError:
                pass


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, scale: int = 4, audio: np.ndarray | None = None,
              audio_spec: dict[str, int] | None = None) -> Path:
    """A whole clip at once: frames (T, H, W, 3) uint8, audio (T*S, C) int16 split evenly over the frames."""
    frames = np.asarray(frames)
    chunks = [None] * len(frames) if audio is None or not audio_spec else np.array_split(audio, len(frames))
    with Mp4Writer(path, fps, frames.shape[1:3], scale, audio_spec if audio is not None else None) as w:
        for f, a in zip(frames, chunks):
            w.add(f, a)
    return Path(path)


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    a = np.asarray(audio, np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(a.shape[1] if a.ndim == 2 else 1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(a.astype("<i2").tobytes())
