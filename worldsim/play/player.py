"""`worldsim play`: a pygame window onto a world, with keyboard, mouse look and sound.

Controls (DOOM-like): W/S or ↑/↓ move, A/D strafe, ←/→ or Q/E turn, mouse turns (click
the window to capture it, Esc releases, Esc again quits), left button or Ctrl fires,
Space uses, Shift runs. F5 saves a snapshot, F9 returns to it, F1 toggles the HUD.

The loop ticks at the world's rate: read input → one session step → show the frame and
queue the tick's sound on a mixer channel. The HUD shows the tick, frames/s and the model
time of the last tick. ``--ticks N`` stops after N ticks (used by the smoke test with
SDL's dummy video/audio drivers).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

KEYMAP = {  # pygame key name → button
    "w": "forward", "up": "forward", "s": "back", "down": "back", "a": "strafe_left", "d": "strafe_right",
    "left": "turn_left", "q": "turn_left", "right": "turn_right", "e": "turn_right",
    "left ctrl": "attack", "right ctrl": "attack", "space": "use", "left shift": "run", "right shift": "run",
}


@dataclass
class PlayConfig:
    world: str = "default"
    seed: int = 0
    scale: int = 8
    ticks: int | None = None
    mute: bool = False
    mouse_sensitivity: float = 0.15   # degrees of turn per pixel of mouse motion
    device: str | None = None


def _init_audio(pygame, spec: dict | None, mute: bool) -> bool:
    if mute or spec is None:
        return False
    try:
        pygame.mixer.pre_init(frequency=spec["sample_rate"], size=-16, channels=spec["channels"], buffer=512)
        pygame.mixer.init()
        return pygame.mixer.get_init() is not None
    except pygame.error as e:
        print(f"worldsim play: no audio device ({e}); playing silently")
        return False


def play(cfg: PlayConfig) -> dict:
    import pygame
    import torch

    from worldsim.runtime import World

    torch.set_num_threads(1)
    world = World.load(cfg.world, device=cfg.device)
    H, W = world.resolution
    pygame.init()
    audio_on = _init_audio(pygame, world.audio_spec, cfg.mute)
    screen = pygame.display.set_mode((W * cfg.scale, H * cfg.scale + 24))
    pygame.display.set_caption(f"worldsim — {world.name}")
    font = pygame.font.Font(None, 22)
    channel = pygame.mixer.Channel(0) if audio_on else None
    session = world.open(seed=cfg.seed)
    saved = None
    period = 1.0 / world.tick_rate
    names = list(world.schema.buttons)
    hud, grabbed, running = True, False, True
    fps_t, fps_n, fps = time.perf_counter(), 0, 0.0
    last_ms = 0.0
    ticks = 0
    next_t = time.perf_counter()
    while running:
        mouse_dx = 0.0
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT:
                running = False
            elif ev.type == pygame.KEYDOWN:
                if ev.key == pygame.K_ESCAPE:
                    if grabbed:
                        grabbed = False
                        pygame.event.set_grab(False)
                        pygame.mouse.set_visible(True)
                    else:
                        running = False
                elif ev.key == pygame.K_F5:
                    saved = session.snapshot()
                elif ev.key == pygame.K_F9 and saved is not None:
                    session.close()
                    session = world.restore(saved)
                elif ev.key == pygame.K_F1:
                    hud = not hud
            elif ev.type == pygame.MOUSEBUTTONDOWN and not grabbed:
                grabbed = True
                pygame.event.set_grab(True)
                pygame.mouse.set_visible(False)
            elif ev.type == pygame.MOUSEMOTION and grabbed:
                mouse_dx += ev.rel[0] * cfg.mouse_sensitivity
        pressed = pygame.key.get_pressed()
        keys = {KEYMAP[k] for k in KEYMAP if pressed[pygame.key.key_code(k)]}
        if grabbed and pygame.mouse.get_pressed()[0]:
            keys.add("attack")
        action = {"keys": sorted(k for k in keys if k in names), "mouse": [float(np.clip(mouse_dx, -30, 30)), 0.0]}
        t0 = time.perf_counter()
        chunk = session.step(action)
        last_ms = (time.perf_counter() - t0) * 1e3
        frame = chunk.frames[-1]
        surf = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        screen.blit(pygame.transform.scale(surf, (W * cfg.scale, H * cfg.scale)), (0, 0))
        if channel is not None and chunk.audio is not None:
            snd = pygame.mixer.Sound(buffer=np.ascontiguousarray(chunk.audio).tobytes())
            if channel.get_busy():
                channel.queue(snd)
            else:
                channel.play(snd)
        screen.fill((0, 0, 0), (0, H * cfg.scale, W * cfg.scale, 24))
        if hud:
            txt = f"tick {chunk.tick}  {fps:4.1f} fps  model {last_ms:5.1f} ms  {'F9 restores' if saved else 'F5 saves'}"
            screen.blit(font.render(txt, True, (220, 220, 220)), (6, H * cfg.scale + 4))
        pygame.display.flip()
        ticks += 1
        fps_n += 1
        if time.perf_counter() - fps_t >= 1.0:
            fps, fps_n, fps_t = fps_n / (time.perf_counter() - fps_t), 0, time.perf_counter()
        if cfg.ticks is not None and ticks >= cfg.ticks:
            break
        next_t += period
        wait = next_t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            next_t = time.perf_counter()  # behind: do not try to catch up in a burst
    pygame.quit()
    return {"ticks": ticks, "last_tick": session.tick, "audio": audio_on}


def add_play_args(p) -> None:
    p.add_argument("--world", default="default", help="world checkpoint directory (default: the shipped world)")
    p.add_argument("--seed", type=int, default=0, help="picks the start context and seeds sampling")
    p.add_argument("--scale", type=int, default=8, choices=range(1, 17), metavar="1..16", help="window scale")
    p.add_argument("--ticks", type=int, help="quit after this many ticks")
    p.add_argument("--mute", action="store_true")
    p.add_argument("--device", help="cpu, cuda (default: auto)")


def main_play(args) -> int:
    if args.ticks is not None and args.ticks < 1:
        from worldsim.errors import WorldsimError
        raise WorldsimError("--ticks must be ≥ 1")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    r = play(PlayConfig(world=args.world, seed=args.seed, scale=args.scale, ticks=args.ticks, mute=args.mute,
                        device=args.device))
    print(f"played {r['ticks']} ticks")
    return 0
