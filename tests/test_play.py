"""The pygame player: headless scripted play, recording, --start, --connect, and a real X window under Xvfb."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import random_world
from worldsim.cli import main as cli_main
from worldsim.data import open_episodes
from worldsim.play.player import PlayConfig, play


def _script(path, entries):
    path.write_text(json.dumps(entries))
    return str(path)


def test_headless_client_plays_100_scripted_ticks_with_sound_and_records(tmp_path):
    import av

    script = [{"keys": ["turn_right"]}] * 25 + [{"keys": ["forward", "run"]}] * 25 + \
             [{"mouse": [-6.0, 0.0]}] * 25 + [{"keys": ["attack"]}] * 25
    r = play(PlayConfig(headless=True, actions=_script(tmp_path / "a.json", script), seed=1,
                        record=str(tmp_path / "out.mp4"), record_scale=2, record_episode=str(tmp_path / "eps")))
    assert r["ticks"] == 100 and r["last_tick"] == 101  # + the no-op tick that makes the first picture
    assert r["frames_changed"] >= 95
    from worldsim.model.world_model import DEFAULT_WORLD_DIR
    full = json.loads((DEFAULT_WORLD_DIR / "world.json").read_text())["sampler"]["steps"]
    assert r["sampling_steps_mean"] == full  # unpaced: the world's full count every tick
    assert r["audio"] and r["audio_queued"] > 0  # sound went to the (dummy) mixer
    assert r["paced"] is False  # headless runs unpaced: sound chunks may be dropped, and the summary says why
    with av.open(str(tmp_path / "out.mp4")) as f:
        assert len(f.streams.audio) == 1
        v = f.streams.video[0]
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(v)]
    assert len(frames) == 101 and frames[0].shape == (128, 128, 3)
    (ep,) = open_episodes(tmp_path / "eps")
    ep.verify()
    assert len(ep) == 100 and ep.meta["source"] == "worldsim play"
    assert ep.buttons[:25, 5].all() and ep.buttons[25:50, 0].all() and (ep.axes[50:75, 0] == -6).all()
    assert ep.audio.shape == (100, 1260, 2)
    # frames[t] is what was on screen before action t: the first recorded frame is the first shown
    video0 = frames[0][::2, ::2].astype(np.float32)  # H.264 is lossy: close, not equal
    assert np.abs(ep.frames[0] - video0).mean() < 6 < np.abs(ep.frames[-1] - video0).mean()


class _Keys:
    """Key states for InputState.entry: the named keys held, every other key up."""

    def __init__(self, *names):
        import pygame

        self.down = {pygame.key.key_code(n) for n in names}

    def __getitem__(self, code):
        return code in self.down


@pytest.fixture
def pygame_headless(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame

    pygame.init()
    yield pygame
    pygame.quit()


def test_keys_play_worlds_whose_actions_are_not_dooms(pygame_headless):
    from worldsim.actions import VIZDOOM_SCHEMA, ActionSchema
    from worldsim.play.controls import InputState, key_bindings

    # DOOM's own keys and the mouse, as before
    doom = InputState(VIZDOOM_SCHEMA)
    doom.grabbed, doom.dx = True, 4.0
    e = doom.entry(_Keys("w", "left shift"), clicked=True)
    assert e == {"keys": ["attack", "forward", "run"], "axes": {"mouse_dx": 4.0, "mouse_dy": 0.0}}
    assert doom.describe() == "" and VIZDOOM_SCHEMA.parse(e).axes[0] == 4.0
    # a Discrete env (CartPole): number keys, one action at a time, no mouse
    cart = ActionSchema(buttons=("action_0", "action_1"), groups=(("action_0", "action_1"),))
    inp = InputState(cart)
    assert key_bindings(cart) == ({"1": "action_0", "2": "action_1"}, {})
    e = inp.entry(_Keys("1", "2"), clicked=True)
    assert e == {"keys": ["action_0"], "axes": {}} and cart.parse(e).buttons.tolist() == [1, 0]
    assert inp.entry(_Keys("2"))["keys"] == ["action_1"] and "1 action_0 · 2 action_1" == inp.describe()
    # a Box env (CarRacing-like): key pairs drive each axis to its bounds, none held = 0 (clipped)
    car = ActionSchema(buttons=(), axes=("axis_0", "axis_1", "axis_2"), axis_low=(-1.0, 0.0, 0.0),
                       axis_high=(1.0, 1.0, 1.0))
    inp = InputState(car)
    assert inp.entry(_Keys("left", "up"))["axes"] == {"axis_0": -1.0, "axis_1": 1.0, "axis_2": 0.0}
    assert inp.entry(_Keys("x"))["axes"] == {"axis_0": 0.0, "axis_1": 0.0, "axis_2": 1.0}
    assert "left/right axis_0" in inp.describe()
    # more buttons than number keys: the rest are named as script-only
    many = ActionSchema(buttons=tuple(f"button_{i}" for i in range(12)))
    assert "unbound (scripts only): button_10, button_11" in InputState(many).describe()


def test_player_plays_a_world_with_a_discrete_action_schema(tmp_path, capsys):
    from worldsim.actions import ActionSchema

    cart = ActionSchema(buttons=("action_0", "action_1"), groups=(("action_0", "action_1"),))
    w = random_world(tmp_path / "w", schema=cart)
    r = play(PlayConfig(world=str(w), headless=True, ticks=4, record_episode=str(tmp_path / "eps")))
    assert r["ticks"] == 4 and "keys for random-test-world: 1 action_0 · 2 action_1" in capsys.readouterr().out
    (ep,) = open_episodes(tmp_path / "eps")
    assert ep.buttons.shape == (4, 2) and ep.axes.shape == (4, 0)


def test_different_actions_give_different_frames(tmp_path):
    outs = []
    for name, entry in (("left", {"keys": ["turn_left"]}), ("right", {"keys": ["turn_right"]})):
        play(PlayConfig(headless=True, actions=_script(tmp_path / f"{name}.json", [entry] * 12), seed=2,
                        record_episode=str(tmp_path / name)))
        outs.append(open_episodes(tmp_path / name)[0].frames.astype(np.float32))
    assert np.array_equal(outs[0][0], outs[1][0])                    # same start
    assert np.abs(outs[0][4:] - outs[1][4:]).mean() > 2.0             # then the turns part ways


def test_start_image_via_cli(tmp_path, capsys):
    import cv2

    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :80] = (0, 0, 255)  # BGR: left half red
    cv2.imwrite(str(tmp_path / "start.png"), img)
    rc = cli_main(["play", "--headless", "--ticks", "3", "--start", str(tmp_path / "start.png"),
                   "--record-episode", str(tmp_path / "eps"), "--mute"])
    assert rc == 0
    assert "played 3 ticks" in capsys.readouterr().out
    (ep,) = open_episodes(tmp_path / "eps")
    f = ep.frames[0].astype(np.float32)  # (64, 64, 3): the world begins from the picture
    assert f[:, :32, 0].mean() > f[:, 32:, 0].mean() + 20


@pytest.mark.parametrize("argv, msg", [
    (["--headless"], "needs --ticks"),
    (["--headless", "--ticks", "0"], "--ticks must be"),
    (["--headless", "--ticks", "2", "--record", "x.avi"], "expected a .mp4"),
    (["--headless", "--ticks", "2", "--record", "/proc/version/x.mp4"], "cannot write there"),
    (["--headless", "--ticks", "2", "--start", "/no/such.png"], "no such image"),
    (["--headless", "--ticks", "2", "--actions", "/no/such.json"], "no such action script"),
    (["--connect", "localhost:5555"], "expected tcp://"),
    (["--connect", "tcp://127.0.0.1:5555", "--world", "x"], "belong to the server"),
])
def test_bad_arguments_are_refused_clearly(argv, msg, capsys, tmp_path):
    assert cli_main(["play", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_unreadable_start_image_and_bad_script(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert cli_main(["play", "--headless", "--ticks", "2", "--start", str(tmp_path / "bad.png")]) == 2
    assert "not an image" in capsys.readouterr().err
    (tmp_path / "s.json").write_text('[{"keys": ["jump"]}]')
    assert cli_main(["play", "--headless", "--actions", str(tmp_path / "s.json")]) == 2
    assert "entry 0" in capsys.readouterr().err


def test_play_connects_to_a_bridge_server(tmp_path):
    from engine_bridge.server import BridgeServer, ServerConfig
    from worldsim.play.sources import RemoteSource
    from worldsim.runtime import World
    from worldsim.errors import WorldsimError

    world = World.load(str(random_world(tmp_path / "w")))
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*")).start()
    try:
        r = play(PlayConfig(connect=srv.endpoint, headless=True, ticks=6, record_episode=str(tmp_path / "eps")))
        assert r["ticks"] == 6 and r["source"].startswith("bridge") and r["frames_changed"] >= 1
        assert len(open_episodes(tmp_path / "eps")[0]) == 6
        src = RemoteSource(srv.endpoint)
        snap = src.snapshot()
        a = src.step({"keys": ["forward"]}).frame
        src.restore(snap)
        assert np.array_equal(src.step({"keys": ["forward"]}).frame, a)  # F5/F9 over the bridge
        src.close()
    finally:
        srv.stop()
    with pytest.raises(WorldsimError, match="is `worldsim serve` running"):
        RemoteSource("tcp://127.0.0.1:9", timeout_ms=200)


def test_player_stops_cleanly_when_the_server_goes_away(tmp_path):
    from engine_bridge.server import BridgeServer, ServerConfig
    from worldsim.errors import WorldsimError
    from worldsim.play.sources import RemoteSource
    from worldsim.runtime import World

    world = World.load(str(random_world(tmp_path / "w")))
    srv = BridgeServer(world, ServerConfig(bind="tcp://127.0.0.1:*")).start()
    src = RemoteSource(srv.endpoint, timeout_ms=300)
    src.step({})
    srv.stop()
    with pytest.raises(WorldsimError, match="lost the bridge server"):
        src.step({})
    src.close()  # best effort, returns promptly


def _read_xwd(data: bytes) -> np.ndarray:
    """An X window dump (xwd, 24/32-bit TrueColor) → (H, W, 3) uint8 RGB."""
    h = np.frombuffer(data[:100], ">u4")
    header, width, height, byte_order, bpp, bpl = int(h[0]), int(h[4]), int(h[5]), int(h[7]), int(h[11]), int(h[12])
    masks, ncolors = (int(h[14]), int(h[15]), int(h[16])), int(h[19])
    assert bpp == 32, f"expected a 32-bit visual, got {bpp}"
    start = header + 12 * ncolors
    px = np.frombuffer(data[start:start + height * bpl], "<u4" if byte_order == 0 else ">u4")
    px = px.reshape(height, bpl // 4)[:, :width]
    out = []
    for m in masks:
        shift = (m & -m).bit_length() - 1
        out.append(((px & m) >> shift).astype(np.uint8))
    return np.stack(out, -1)


@pytest.mark.skipif(any(shutil.which(x) is None for x in ("Xvfb", "xwd", "xwininfo")),
                    reason="needs Debian's xvfb, x11-apps and x11-utils (make system-deps)")
def test_window_on_an_x_server_shows_frame_and_hud(tmp_path):
    """The real client on a virtual X display: the window is captured from the X server itself."""
    import time

    xs = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        display = ":" + xs.stdout.readline().strip()
        env = dict(os.environ, DISPLAY=display, SDL_VIDEODRIVER="x11", SDL_AUDIODRIVER="dummy")
        shot = tmp_path / "shot.png"
        player = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "play", "--ticks", "80", "--scale", "6",
                                   "--screenshot", str(shot)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        win, deadline = None, time.monotonic() + 90
        while win is None and time.monotonic() < deadline and player.poll() is None:
            tree = subprocess.run(["xwininfo", "-root", "-tree", "-display", display], capture_output=True,
                                  text=True).stdout
            win = next((ln.split()[0] for ln in tree.splitlines() if "worldsim" in ln and "384x384" in ln), None)
            time.sleep(0.3)
        assert win is not None, "the player window never appeared on the X display"
        time.sleep(1.5)  # let it play a few ticks
        dump = subprocess.run(["xwd", "-id", win, "-silent", "-display", display], capture_output=True).stdout
        out, err = player.communicate(timeout=120)
        assert player.returncode == 0, err
    finally:
        xs.terminate()
        xs.wait(10)
    img = _read_xwd(dump)                                                 # (384, 384, 3) from the X server
    assert img.shape == (384, 384, 3)
    hud = img[4:80, 4:300].astype(np.int32)
    assert (hud.max(-1) > 200).mean() > 0.02                              # HUD text is drawn
    assert img[200:].std() > 5                                            # the world's picture below it
    assert "played 80 ticks" in out and shot.exists()                     # --screenshot saved the same window


def _demo(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "demos" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"demo_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_play_remote_demo_spawns_a_server_and_plays(tmp_path, capsys):
    assert _demo("play_remote").main(["--spawn-server", "--headless", "--ticks", "5",
                                      "--record", str(tmp_path / "r.mp4")]) == 0
    assert "played 5 ticks over bridge tcp://127.0.0.1:" in capsys.readouterr().out
    assert (tmp_path / "r.mp4").stat().st_size > 0


def test_robot_rollout_demo_compares_learned_and_real_game(tmp_path, capsys):
    import av

    assert _demo("robot_rollout").main(["--envs", "2", "--ticks", "4", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "divergence.json").read_text())
    assert set(rep["psnr_learned"]) == {"1", "2", "4"} and all(v > 5 for v in rep["psnr_learned"].values())
    with av.open(str(tmp_path / "side_by_side.mp4")) as f:
        assert sum(1 for _ in f.decode(video=0)) == 4
    assert "PSNR learned" in capsys.readouterr().out


def test_mp4_writer_refuses_bad_paths_and_writes_atomically(tmp_path):
    import av

    from worldsim.errors import WorldsimError
    from worldsim.play.media import Mp4Writer, write_mp4

    with pytest.raises(WorldsimError, match="MP4"):
        Mp4Writer(tmp_path / "x.avi", 17.5, (64, 64))
    (tmp_path / "file").write_text("")
    with pytest.raises(WorldsimError, match="cannot create directory"):
        Mp4Writer(tmp_path / "file" / "x.mp4", 17.5, (64, 64))
    w = Mp4Writer(tmp_path / "new" / "dir" / "x.mp4", 17.5, (64, 64))   # missing directories are made
    w.add(np.zeros((64, 64, 3), np.uint8))
    assert w.close().exists()
    with pytest.raises(WorldsimError, match="nothing was recorded"):
        Mp4Writer(tmp_path / "empty.mp4", 17.5, (64, 64)).close()
    assert not list(tmp_path.glob("empty.mp4*"))
    spec = {"sample_rate": 22050, "channels": 2, "samples_per_step": 1260}
    frames = np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    audio = (np.sin(np.arange(12600) / 5.0)[:, None] * 8000).repeat(2, 1).astype(np.int16)
    w = Mp4Writer(tmp_path / "a.mp4", 17.5, (64, 64), scale=1, audio_spec=spec)
    for f, a in zip(frames, np.split(audio, 10)):
        w.add(f, a)
    assert not (tmp_path / "a.mp4").exists()          # only the .partial file until close
    w.close()
    with av.open(str(tmp_path / "a.mp4")) as f:
        v, a = f.streams.video[0], f.streams.audio[0]
        assert (v.width, v.height, a.rate) == (64, 64, 22050)
        assert abs(float(a.duration * a.time_base) - 10 / 17.5) < 0.1
    write_mp4(tmp_path / "b.mp4", frames, 17.5, scale=2)
    assert (tmp_path / "b.mp4").stat().st_size > 0


def test_local_player_sheds_sampling_steps_only_when_paced(tmp_path):
    from worldsim.play.sources import LocalSource
    from worldsim.runtime.clock import StepGovernor

    world = str(random_world(tmp_path / "w"))
    src = LocalSource(world, seed=1)
    full = src.governor.max_steps
    assert full >= 2
    src.governor = StepGovernor(full, period_s=1e-6)  # this machine is "too slow" for any tick
    src.set_paced(False)  # unpaced (scripted headless): reproducible, never degraded
    assert [src.step({}).steps for _ in range(3)] == [full] * 3
    src.adaptive = True
    assert [src.step({}).steps for _ in range(3)][-1] == 1  # paced: falls to one step instead of lagging
    src.close()
    fixed = LocalSource(world, seed=1, sampling_steps=full)  # an explicit --sampling-steps is kept
    fixed.governor = StepGovernor(full, period_s=1e-6)
    assert [fixed.step({}).steps for _ in range(3)] == [full] * 3
    fixed.close()
