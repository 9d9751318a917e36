"""`worldsim play`: a pygame window onto a world, with keyboard, mouse look, sound and recording.

Each tick: read input → one step of the source (a world in this process, or a bridge
server with ``--connect``) → show the frame (smoothly scaled to the window), queue the
tick's sound, feed the recorders. The loop keeps the world's tick rate; a tick that misses
its deadline is counted as dropped and the clock restarts instead of bursting to catch up.

Headless (``--headless``: SDL's dummy video and audio drivers) runs the same loop for
scripts and tests, unpaced unless ``--realtime``, driven by ``--actions SCRIPT.json``.
The controls are listed in :mod:`worldsim.play.controls`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.device import DEVICE_HELP, device_arg
from worldsim.errors import WorldsimError, check_output_file

HUD_KEYS = "F1 HUD · P pause · F5/F9 save/restore · F12 shot"


@dataclass
class PlayConfig:
    world: str = "default"
    connect: str | None = None          # tcp://HOST:PORT of a `worldsim serve` (instead of `world`)
    seed: int = 0
    start: str | None = None            # an image to begin from
    scale: int = 8
    ticks: int | None = None
    mute: bool = False
    mouse_sensitivity: float = 0.15     # degrees of turn per pixel of mouse motion
    device: str | None = None
    sampling_steps: int | None = None
    memory: bool = True                 # long-term scene memory (local worlds; a server decides its own)
    headless: bool = False
    realtime: bool | None = None        # pace at the tick rate (default: yes unless headless)
    actions: str | None = None          # JSON action script played before (or instead of) the keyboard
    record: str | None = None           # OUT.mp4, video + sound
    record_scale: int = 4
    record_episode: str | None = None   # DIR: the session as an episode (training data)
    screenshot: str | None = None       # PNG of the window when the loop ends
    hud: bool = True
    resume: str | None = None           # a saved session (.wsnap) to continue instead of opening a new one
    save: str | None = None             # write the session there (.wsnap) when the loop ends


@dataclass
class Stats:
    ticks: int = 0
    late: int = 0                       # ticks shown after their deadline
    dropped: int = 0                    # whole tick slots that passed without a new frame
    frames_changed: int = 0             # ticks whose frame differs from the one before
    fps: float = 0.0
    model_ms: float = 0.0
    steps: int = 0                      # sampling steps of the last tick (fewer when the machine is behind)
    steps_total: int = 0                # sampling steps over the run's ticks, for its summary
    steps_ticks: int = 0
    light: bool = False                 # the last tick used the light turn prior
    light_ticks: int = 0                # ticks made with the light turn prior (the clock's lowest level)
    latency_ms: float = 0.0             # input sampled → frame on screen, last tick
    latencies: list[float] = field(default_factory=list)


def _make_source(cfg: PlayConfig):
    from worldsim.play.sources import LocalSource, RemoteSource

    if cfg.connect:
        return RemoteSource(cfg.connect, seed=cfg.seed, start=cfg.start)
    return LocalSource(cfg.world, seed=cfg.seed, start=cfg.start, device=cfg.device,
                       sampling_steps=cfg.sampling_steps, memory=cfg.memory, resume=cfg.resume)


class EpisodeSink:
    """The played session in the episode format: ``frames[t]`` is what the player saw before
    choosing ``actions[t]``. A restore (F9) ends the current episode and starts a new one."""

    def __init__(self, root: str, source, cfg: PlayConfig):
        from worldsim.data.episode import next_episode_index

        self.root, self.source, self.cfg = Path(root), source, cfg
        if self.root.exists() and not self.root.is_dir():
            raise WorldsimError(f"--record-episode {self.root}: exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = next_episode_index(self.root)
        self.written: list[str] = []
        self.writer = None

    def begin(self) -> None:
        from worldsim.data.episode import EpisodeWriter

        s = self.source
        meta = {"source": "worldsim play", "world": s.name, "where": s.where, "tick_rate": s.tick_rate,
                "seed": self.cfg.seed, "generated": True, "map": s.name}
        self.writer = EpisodeWriter(self.root / f"ep_{self.index:06d}", s.schema, meta, s.resolution, s.audio_spec)
        self.index += 1

    def add(self, frame: np.ndarray, action: dict[str, Any], audio: np.ndarray | None) -> None:
        a = self.source.schema.parse(action)
        spec = self.source.audio_spec
        if spec and audio is None:
            audio = np.zeros((spec["samples_per_step"], spec["channels"]), np.int16)
        self.writer.append(frame, a.buttons, a.axes, audio if spec else None)

    def end(self) -> None:
        if self.writer is not None and len(self.writer):
            self.written.append(str(self.writer.close()))
        self.writer = None


def _draw_hud(pygame, screen, fonts: dict, lines: list[str]) -> None:
    """Lines of text on a translucent box, in the largest font (22 px down to 12) that fits the window."""
    width = screen.get_width() - 20
    size = 22
    while True:
        if size not in fonts:
            fonts[size] = pygame.font.Font(None, size)
        font = fonts[size]
        if size <= 12 or max(font.size(t)[0] for t in lines) <= width:
            break
        size -= 2
    step = font.get_linesize()
    w = max(font.size(t)[0] for t in lines) + 12
    box = pygame.Surface((w, step * len(lines) + 8), pygame.SRCALPHA)
    box.fill((0, 0, 0, 150))
    screen.blit(box, (4, 4))
    for i, t in enumerate(lines):
        screen.blit(font.render(t, True, (235, 235, 235)), (10, 8 + step * i))


def play(cfg: PlayConfig) -> dict[str, Any]:
    """Run the player; returns what happened (ticks, drops, latency, sound, written files)."""
    if cfg.headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        os.environ["SDL_AUDIODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame
    import torch

    from worldsim.actions import load_script
    from worldsim.play.controls import AudioOut, InputState
    from worldsim.play.media import Mp4Writer

    torch.set_num_threads(1)
    if cfg.headless and cfg.ticks is None and not cfg.actions:
        raise WorldsimError("--headless needs --ticks N or --actions SCRIPT (it has no keyboard to stop it)")
    source = _make_source(cfg)
    try:
        script = [source.schema.to_entry(a) for a in load_script(cfg.actions, source.schema)] if cfg.actions else []
        if cfg.actions and not script:
            raise WorldsimError(f"--actions {cfg.actions}: the action script is empty")
    except BaseException:
        source.close()
        raise
    limit = cfg.ticks if cfg.ticks is not None else (len(script) if cfg.headless else None)
    video = episodes = None
    try:
        pygame.init()
        realtime = (not cfg.headless) if cfg.realtime is None else cfg.realtime
        source.set_paced(realtime)
        H, W = source.resolution
        audio = AudioOut(source.audio_spec, cfg.mute)
        if audio.error:
            print(f"worldsim play: no audio device ({audio.error}); playing silently")
        flags = 0 if cfg.headless else pygame.RESIZABLE
        screen = pygame.display.set_mode((W * cfg.scale, H * cfg.scale), flags)
        pygame.display.set_caption(f"worldsim — {source.name} ({source.where})")
        fonts: dict = {}
        inp = InputState(source.schema, cfg.mouse_sensitivity)
        if inp.describe():  # a world whose actions are not DOOM's: say which keys play it
            print(f"worldsim play: keys for {source.name}: {inp.describe()}")
        if cfg.record:
            video = Mp4Writer(cfg.record, source.tick_rate, (H, W), cfg.record_scale, source.audio_spec)
        episodes = EpisodeSink(cfg.record_episode, source, cfg) if cfg.record_episode else None
        st = Stats()
        saved, paused, hud, running = None, False, cfg.hud, True
        period = 1.0 / source.tick_rate

        # the first frame: a no-op tick, so there is a picture before the first input
        t0 = time.perf_counter()
        cur = source.step({})
        first_frame_ms = (time.perf_counter() - t0) * 1e3
        if episodes:
            episodes.begin()
        if video:
            video.add(cur.frame, cur.audio)
        audio.push(cur.audio)
        last_frame_t = time.perf_counter()
        next_t = time.perf_counter() + period
        while running:
            restored = False
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT:
                    running = False
                elif ev.type == pygame.KEYDOWN:
                    if ev.key == pygame.K_ESCAPE:
                        if inp.grabbed:
                            inp.grab(False)
                        else:
                            running = False
                    elif ev.key == pygame.K_F1:
                        hud = not hud
                    elif ev.key == pygame.K_p:
                        paused = not paused
                        audio.pause(paused)
                        last_frame_t = time.perf_counter()  # a pause is not a slow frame
                        next_t = last_frame_t + period
                    elif ev.key == pygame.K_F5:
                        saved = (source.snapshot(), cur)
                    elif ev.key == pygame.K_F9 and saved is not None:
                        source.restore(saved[0])
                        cur, restored = saved[1], True
                    elif ev.key == pygame.K_F12:
                        shot = f"worldsim-{source.name}-{cur.tick:06d}.png"
                        pygame.image.save(screen, shot)
                        print(f"screenshot: {shot}")
                elif ev.type == pygame.MOUSEBUTTONDOWN and not inp.grabbed and not cfg.headless:
                    inp.grab(True)
                elif ev.type == pygame.MOUSEMOTION:
                    inp.motion(ev.rel)
            if restored and episodes:
                episodes.end()
                episodes.begin()
            t_in = time.perf_counter()
            if not paused and running:
                action = inp.action()
                if st.ticks < len(script):
                    action = script[st.ticks]
                nxt = source.step(action)
                st.model_ms, st.steps, st.light = nxt.model_ms, nxt.steps, nxt.light
                if nxt.steps:
                    st.steps_total, st.steps_ticks = st.steps_total + nxt.steps, st.steps_ticks + 1
                st.light_ticks += int(nxt.light)
                if episodes:
                    episodes.add(cur.frame, action, cur.audio)
                if video:
                    video.add(nxt.frame, nxt.audio)
                audio.push(nxt.audio)
                st.frames_changed += int(not np.array_equal(nxt.frame, cur.frame))
                cur = nxt
                st.ticks += 1
                now = time.perf_counter()
                dt, last_frame_t = now - last_frame_t, now
                st.fps = 1.0 / dt if st.fps == 0 else 0.9 * st.fps + 0.1 / dt  # smoothed frame rate
            # show the frame, smoothly scaled to the window (which the user may resize)
            sw, sh = screen.get_size()
            surf = pygame.surfarray.make_surface(np.ascontiguousarray(cur.frame.transpose(1, 0, 2)))  # (W, H, 3)
            screen.blit(pygame.transform.smoothscale(surf, (sw, sh)), (0, 0))
            if hud:
                sound = f"sound {'on' if audio.on else 'off'}"
                if audio.on:
                    sound += f" · queued {audio.queued} · dropped {audio.dropped}"
                lines = [f"{source.name} · tick {cur.tick} · {st.fps:4.1f} fps" + ("  PAUSED" if paused else ""),
                         f"tick {st.model_ms:5.1f} ms" + (f" ({st.steps} steps{', light' if st.light else ''})" if st.steps else "")
                         + f" · input to frame {st.latency_ms:5.1f} ms · "
                         f"late {st.late} · dropped {st.dropped}",
                         sound + f" · {source.memory_status()}" + (" · REC" if video or episodes else ""),
                         HUD_KEYS + (" (saved)" if saved else "")]
                _draw_hud(pygame, screen, fonts, lines)
            pygame.display.flip()
            if not paused:
                st.latency_ms = (time.perf_counter() - t_in) * 1e3
                st.latencies.append(st.latency_ms)
            if limit is not None and st.ticks >= limit:
                break
            if realtime or paused:
                wait = next_t - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                    next_t += period
                else:  # behind: count the skipped tick slots, do not try to catch up in a burst
                    st.late += 1
                    st.dropped += int(-wait // period)
                    next_t = time.perf_counter() + period
        if cfg.screenshot:
            pygame.image.save(screen, cfg.screenshot)
        saved_to = str(source.save(cfg.save)) if cfg.save else None
    finally:
        written = []
        if video and video.frames:
            written.append(str(video.close()))
        elif video:  # stopped before the first frame: nothing to keep
            try:
                video.close()
            except WorldsimError:
                pass
        if episodes:
            episodes.end()
            written += episodes.written
        source.close()
        pygame.quit()
    written += [saved_to] if saved_to else []
    lat = np.array(st.latencies or [0.0])
    return {"ticks": st.ticks, "last_tick": cur.tick, "frames_changed": st.frames_changed, "late": st.late,
            "dropped": st.dropped,
            "first_frame_ms": round(first_frame_ms, 1), "latency_p50_ms": round(float(np.median(lat)), 2),
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 2), "audio": audio.on,
            "audio_queued": audio.queued, "audio_dropped": audio.dropped, "written": written, "paced": realtime,
            "sampling_steps_mean": round(st.steps_total / st.steps_ticks, 2) if st.steps_ticks else None,
            "light_prior_ticks": st.light_ticks, "screenshot": cfg.screenshot, "source": source.where}


def add_play_args(p) -> None:
    from worldsim.play.controls import CONTROLS_HELP

    p.description = "Play a world in a window with keyboard, mouse and sound.\n\n" + CONTROLS_HELP
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--world", default="default", help="world checkpoint directory (default: the shipped world)")
    p.add_argument("--connect", metavar="tcp://HOST:PORT", help="play a `worldsim serve` server instead of a local world")
    p.add_argument("--seed", type=int, default=0, help="picks the start context and seeds sampling")
    p.add_argument("--start", metavar="IMAGE", help="begin from this picture (PNG/JPEG/BMP; resized to the world)")
    p.add_argument("--scale", type=int, default=8, choices=range(1, 17), metavar="1..16", help="window scale")
    p.add_argument("--ticks", type=int, help="quit after this many ticks")
    p.add_argument("--mute", action="store_true", help="no sound")
    p.add_argument("--device", type=device_arg, help=DEVICE_HELP)
    p.add_argument("--sampling-steps", type=int, help="sampler steps per tick (default: the world's)")
    p.add_argument("--memory", choices=["on", "off"], default="on",
                   help="long-term scene memory: come back to a place and find it as it was (default on)")
    p.add_argument("--headless", action="store_true", help="no window or sound device (SDL dummy drivers), unpaced")
    p.add_argument("--realtime", action="store_true", default=None, help="pace headless runs at the tick rate")
    p.add_argument("--actions", metavar="SCRIPT.json", help="play this action script first (headless: instead of input)")
    p.add_argument("--record", metavar="OUT.mp4", help="record video with sound (H.264 + AAC)")
    p.add_argument("--record-scale", type=int, default=4, choices=range(1, 17), metavar="1..16",
                   help="upscale of recorded video (default 4)")
    p.add_argument("--record-episode", metavar="DIR", help="record the session as training data (episode format)")
    p.add_argument("--screenshot", metavar="OUT.png", help="save the window (with the HUD) when the run ends")
    p.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (F1 toggles)")
    p.add_argument("--save", metavar="FILE.wsnap", help="save the session to this file when the run ends (resume it with --resume)")
    p.add_argument("--resume", metavar="FILE.wsnap", help="continue a session saved with --save (same world)")


def main_play(args) -> int:
    if args.ticks is not None and args.ticks < 1:
        raise WorldsimError("--ticks must be ≥ 1")
    if args.sampling_steps is not None and args.sampling_steps < 1:
        raise WorldsimError("--sampling-steps must be ≥ 1")
    if args.connect and (args.world != "default" or args.device or args.sampling_steps or args.memory == "off"):
        raise WorldsimError("--connect plays the server's world: --world/--device/--sampling-steps/--memory "
                            "belong to the server")
    if args.connect and not args.connect.startswith(("tcp://", "ipc://")):
        raise WorldsimError(f"--connect {args.connect!r}: expected tcp://HOST:PORT")
    if args.connect and (args.save or args.resume):
        raise WorldsimError("--save/--resume keep a session of a world in this process; a server keeps its "
                            "sessions' snapshots itself (the bridge's snapshot/restore)")
    if args.resume and args.start:
        raise WorldsimError("--resume continues a saved session: it has no --start picture")
    if args.resume and not Path(args.resume).is_file():
        raise WorldsimError(f"--resume {args.resume}: no such file")
    for flag, path, kind in (("--record", args.record, ".mp4"), ("--screenshot", args.screenshot, ".png"),
                             ("--save", args.save, ".wsnap")):
        if path and not Path(path).suffix.lower() == kind:
            raise WorldsimError(f"{flag} {path}: expected a {kind} file name")
        if path:  # a new user's `--record out/run.mp4` should just work: its folder is made here
            check_output_file(path, flag)
    cfg = PlayConfig(world=args.world, connect=args.connect, seed=args.seed, start=args.start, scale=args.scale,
                     ticks=args.ticks, mute=args.mute, device=args.device, sampling_steps=args.sampling_steps,
                     memory=args.memory == "on",
                     headless=args.headless, realtime=args.realtime, actions=args.actions, record=args.record,
                     record_scale=args.record_scale, record_episode=args.record_episode,
                     screenshot=args.screenshot, hud=not args.no_hud, resume=args.resume, save=args.save)
    r = play(cfg)
    print(f"played {r['ticks']} ticks ({r['source']}): first frame {r['first_frame_ms']} ms, "
          f"input→frame p50 {r['latency_p50_ms']} ms, late {r['late']}, dropped {r['dropped']}, "
          f"sound {'on' if r['audio'] else 'off'} ({r['audio_queued']} chunks queued, {r['audio_dropped']} dropped"
          + ("" if r["paced"] or not r["audio_dropped"] else ": unpaced, ticks come faster than sound plays")
          + ")"
          + (f", sampling steps {r['sampling_steps_mean']:g} a tick on average" if r["sampling_steps_mean"] else "")
          + (f", {r['light_prior_ticks']} with the light turn prior" if r["light_prior_ticks"] else ""))
    for f in r["written"] + ([r["screenshot"]] if r["screenshot"] else []):
        print(f"wrote {f}")
    return 0
