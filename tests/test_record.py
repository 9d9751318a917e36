"""Recording real gameplay: ViZDoom (video, audio, pose, mouse) and a Gymnasium env."""

import json

import numpy as np
import pytest

from worldsim.actions import VIZDOOM_SCHEMA
from worldsim.cli import main
from worldsim.data import Episode, open_episodes
from worldsim.data.info import data_info


def _script():
    s = [{}] * 10  # the player cannot turn during the first tics after spawning
    s += [{"keys": ["forward"]}] * 30
    s += [{"mouse": [5.0, 0]}] * 10 + [{"mouse": [-2.5, 0]}] * 10
    s += [{}] * 20 + [{"keys": ["attack"]}] + [{}] * 29
    s += [{"keys": ["forward", "run"], "mouse": [1.0, 0]}] * 390
    assert len(s) == 500
    return s


@pytest.fixture(scope="module")
def doom_episode(tmp_path_factory):
    d = tmp_path_factory.mktemp("doom")
    (d / "script.json").write_text(json.dumps(_script()))
    rc = main(["record", "vizdoom", "--map", "MAP01", "--steps", "500", "--out", str(d / "data"),
               "--script", str(d / "script.json"), "--seed", "3", "--quiet"])
    assert rc == 0
    (ep,) = open_episodes(d / "data")
    return ep


def test_vizdoom_recording_shapes(doom_episode):
    e = doom_episode
    assert len(e) == 500 and e.schema == VIZDOOM_SCHEMA
    assert e.frames.shape == (500, 64, 64, 3) and e.depth.shape == (500, 64, 64)
    assert e.audio.shape == (500, 1260, 2) and e.meta["audio"]["sample_rate"] == 22050
    assert e.meta["tick_rate"] == 17.5 and e.meta["frame_skip"] == 2 and e.meta["map"] == "MAP01"
    assert e.meta["stats"]["record_steps_per_s"] > 0
    # the recorded actions are the script's
    expected = [VIZDOOM_SCHEMA.parse(x) for x in _script()]
    b, a = VIZDOOM_SCHEMA.stack(expected)
    np.testing.assert_array_equal(e.buttons, b)
    np.testing.assert_allclose(e.axes, a)


def test_vizdoom_audio_not_silent_after_attack(doom_episode):
    peak = np.abs(np.asarray(doom_episode.audio, np.int32)).max(axis=(1, 2))  # (T,)
    attack = 80  # the step the script fires on; its sound arrives with the next frames
    assert peak[attack + 1: attack + 5].max() > 2000, "ATTACK produced no sound: is libopenal1 installed?"
    assert peak[60:attack + 1].max() < 500, "expected quiet before the shot"


def test_vizdoom_pose_moves_and_yaw_follows_mouse(doom_episode):
    pose = np.asarray(doom_episode.pose)
    moved = np.linalg.norm(pose[40, :2] - pose[10, :2])
    assert moved > 100, f"30 steps forward moved only {moved:.1f} units"
    yaw = pose[:, 3]
    d = lambda a, b: (yaw[b] - yaw[a] + 180) % 360 - 180  # noqa: E731
    # mouse_dx is degrees per step, + turns right (Doom's angle decreases)
    assert d(40, 50) == pytest.approx(-50.0, abs=0.5)
    assert d(50, 60) == pytest.approx(+25.0, abs=0.5)


def test_explorer_is_deterministic_and_covers(tmp_path):
    runs = []
    for name in ("a", "b"):
        assert main(["record", "vizdoom", "--steps", "400", "--out", str(tmp_path / name), "--seed", "7",
                     "--no-depth", "--quiet"]) == 0
        (ep,) = open_episodes(tmp_path / name)
        runs.append(ep)
    np.testing.assert_array_equal(runs[0].frames, runs[1].frames)
    np.testing.assert_array_equal(runs[0].axes, runs[1].axes)
    np.testing.assert_array_equal(runs[0].audio, runs[1].audio)
    info = data_info(tmp_path / "a")
    assert info["coverage_cells_per_1k"] > 30  # walks about, not jitter at the spawn point
    assert info["button_press_fraction"]["forward"] > 0.2
    assert np.abs(runs[0].axes[:, 0]).max() > 3  # turns with the mouse
    assert info["audio_nonsilent_fraction"] > 0


def test_gym_recording_and_script(tmp_path):
    assert main(["record", "gym", "--env", "CartPole-v1", "--steps", "120", "--out", str(tmp_path / "cp"),
                 "--resolution", "32", "--quiet"]) == 0
    eps = open_episodes(tmp_path / "cp")
    assert sum(len(e) for e in eps) == 120
    e = eps[0]
    assert e.schema.buttons == ("action_0", "action_1") and e.frames.shape[1:] == (32, 32, 3)
    assert (e.buttons.sum(axis=1) == 1).all()  # Discrete: exactly one held
    assert e.reward is not None and e.audio is None and e.meta["source"] == "gym"
    assert e.meta["env_action_space"] == {"type": "Discrete", "n": 2, "start": 0}  # the env's own space, kept
    assert e.frames.std() > 0  # rendered something
    (tmp_path / "s.json").write_text(json.dumps([{"keys": ["action_1"]}, {}] * 3 + [{}, {"keys": ["action_1"]}] * 2))
    assert main(["record", "gym", "--env", "CartPole-v1", "--steps", "50", "--out", str(tmp_path / "scripted"),
                 "--script", str(tmp_path / "s.json"), "--quiet"]) == 0
    (s,) = open_episodes(tmp_path / "scripted")
    assert len(s) == 10 and s.buttons[:6:2, 1].all() and s.buttons[1:6:2, 0].all() and s.buttons[9, 1]


def test_ctrl_c_keeps_what_was_recorded(tmp_path, monkeypatch):
    """A recording interrupted mid-episode writes that episode's steps (ended_by: interrupted)."""
    from worldsim.record.gym_recorder import GymRecordConfig, record_gym

    (tmp_path / "impatient.py").write_text(
        "calls = 0\n"
        "def policy(obs, space):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls > 7:\n"
        "        raise KeyboardInterrupt\n"
        "    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        record_gym(GymRecordConfig(env_id="CartPole-v1", out=str(tmp_path / "cp"), steps=100, seed=3,
                                   policy="impatient:policy", progress=False))
    (e,) = open_episodes(tmp_path / "cp")
    e.verify()
    assert len(e) == 7 and e.meta["ended_by"] == "interrupted" and e.buttons[:, 1].all()


def test_ctrl_c_keeps_what_vizdoom_recorded(tmp_path, monkeypatch, capsys):
    from worldsim.record import vizdoom_recorder

    real, calls = vizdoom_recorder.Explorer.act, []

    def act(self, *a, **k):
        calls.append(1)
        if len(calls) > 25:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(vizdoom_recorder.Explorer, "act", act)
    assert main(["record", "vizdoom", "--steps", "100", "--out", str(tmp_path / "d"), "--no-depth", "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    (e,) = open_episodes(tmp_path / "d")
    e.verify()
    assert len(e) == 25 and e.meta["ended_by"] == "interrupted" and e.audio.shape[0] == 25


def test_gym_box_space(tmp_path):
    assert main(["record", "gym", "--env", "Pendulum-v1", "--steps", "20", "--out", str(tmp_path / "p"),
                 "--quiet"]) == 0
    (e,) = open_episodes(tmp_path / "p")
    assert e.schema.axes == ("axis_0",) and e.schema.axis_low == (-2.0,)
    assert np.abs(e.axes).max() <= 2.0


@pytest.mark.parametrize("argv, msg", [
    (["record", "vizdoom", "--map", "MAP99", "--steps", "10", "--out", "{tmp}/x"], "MAP99"),
    (["record", "vizdoom", "--steps", "10", "--out", "{tmp}/x", "--script", "{tmp}/none.json"], "no such action script"),
    (["record", "gym", "--env", "NoSuchEnv-v0", "--steps", "10", "--out", "{tmp}/x"], "NoSuchEnv"),
    (["record", "gym", "--env", "CartPole-v1", "--out", "{tmp}/x", "--policy", "nomodule:f"], "cannot load policy"),
])
def test_record_bad_input_is_one_clear_line(tmp_path, capsys, argv, msg):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_silent_openal_is_refused_not_recorded(tmp_path, monkeypatch, capsys):
    """OpenAL that loads but has no usable device records zeros: the recorder must say so."""
    from worldsim.record.doom import DoomGame

    real = DoomGame.observe

    def silent(self):
        frame, audio, pose, depth = real(self)
        return frame, None if audio is None else np.zeros_like(audio), pose, depth

    monkeypatch.setattr(DoomGame, "observe", silent)
    rc = main(["record", "vizdoom", "--steps", "400", "--out", str(tmp_path / "s"), "--no-depth", "--quiet"])
    assert rc != 0
    assert "exact silence" in capsys.readouterr().err
    assert not list((tmp_path / "s").glob("ep_*"))  # nothing half-right is left behind
