"""Snapshots on disk: a saved session resumes bit-exactly, in the same world object or a newly
loaded one; a file that is not a snapshot, or one of another world or other weights, is refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from worldsim.errors import WorldsimError
from worldsim.runtime import World

TURN = {"keys": ["forward"], "mouse": [6.0, 0.0]}


@pytest.fixture(scope="module")
def world():
    return World.load("default")


def _same(a, b):
    return all(np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio) for x, y in zip(a, b))


def test_a_saved_session_resumes_bit_exactly_with_its_memory(world, tmp_path):
    s = world.open(seed=5)
    for _ in range(45):  # long enough to have remembered views older than the KV window
        s.step(TURN)
    path = s.save(tmp_path / "game.wsnap")
    r = world.restore(path)  # the file's path
    r2 = World.load("default").restore(str(path))  # another World object, as a later process would
    assert r.tick == s.tick == r2.tick and r.seed == s.seed
    m, mr = s.state.memories[0], r.state.memories[0]
    assert len(mr) == len(m) and mr.keys == m.keys and np.array_equal(mr.latents, m.latents)
    assert (mr.pose.x, mr.pose.yaw, mr.conf_now, mr.hits) == (m.pose.x, m.pose.yaw, m.conf_now, m.hits)
    a, b, c = ([x.step(TURN) for _ in range(40)] for x in (s, r, r2))
    assert _same(a, b) and _same(a, c)
    assert r.state.memories[0].hits == s.state.memories[0].hits == r2.state.memories[0].hits


def _rewrite(src, dst, edit_meta=None, drop=None):
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["worldsim"])
        t = {k: f.get_tensor(k) for k in f.keys() if k != drop}
    if edit_meta:
        edit_meta(meta)
    save_file(t, str(dst), metadata={"worldsim": json.dumps(meta)})
    return dst


def test_a_file_that_does_not_fit_is_refused_with_a_clear_error(world, tmp_path):
    good = world.open(seed=1).save(tmp_path / "ok.wsnap")
    (tmp_path / "junk.wsnap").write_bytes(b"not a snapshot at all")
    save_file({"x": __import__("torch").zeros(2)}, str(tmp_path / "plain.wsnap"))
    cases = {
        tmp_path / "missing.wsnap": "no such snapshot file",
        tmp_path / "junk.wsnap": "not a readable snapshot file",
        tmp_path / "plain.wsnap": "not a worldsim snapshot",
        _rewrite(good, tmp_path / "other.wsnap", lambda m: m.update(world="cartpole")): "a snapshot of world 'cartpole'",
        _rewrite(good, tmp_path / "weights.wsnap", lambda m: m.update(digest="00" * 32)): "other weights",
        _rewrite(good, tmp_path / "v9.wsnap", lambda m: m.update(version=9)): "format version 9",
        _rewrite(good, tmp_path / "cut.wsnap", drop="cache.k.3"): "damaged or incomplete",
    }
    for path, msg in cases.items():
        with pytest.raises(WorldsimError, match=msg):
            world.restore(path)
    assert world.restore(good).tick == 0  # the good one still loads
    with pytest.raises(WorldsimError, match="cannot write the snapshot"):
        (tmp_path / "afile").write_text("")
        world.open(seed=1).save(tmp_path / "afile" / "under_a_file.wsnap")


def test_play_saves_and_resumes_a_session(tmp_path):
    snap = tmp_path / "play.wsnap"
    cmd = [sys.executable, "-m", "worldsim.cli", "play", "--headless", "--ticks", "6"]
    r = subprocess.run(cmd + ["--save", str(snap)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"wrote {snap}" in r.stdout, r.stderr
    r = subprocess.run(cmd + ["--resume", str(snap)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "played 6 ticks" in r.stdout, r.stderr
    r = subprocess.run(cmd + ["--resume", str(snap), "--start", "demos/player.png"], capture_output=True, text=True)
    assert r.returncode != 0 and "no --start" in r.stderr


def test_a_snapshot_branches_with_a_new_seed_and_shows_its_latest_frame(world, tmp_path):
    s = world.open(seed=2)
    last = [s.step(TURN) for _ in range(12)][-1]
    assert np.array_equal(s.frame(), last.frames[-1])  # the latest frame, decoded again from its latent
    snap = s.snapshot()
    a, a2, b = world.restore(snap, seed=7), world.restore(snap, seed=7), world.restore(snap, seed=8)
    assert a.tick == b.tick == s.tick and a.seed == 7
    fa, fa2, fb = ([x.step(TURN) for _ in range(6)] for x in (a, a2, b))
    assert _same(fa, fa2) and not _same(fa, fb)  # a seed is a reproducible branch; another seed another one
    r = world.restore(snap)  # no seed: the snapshot's own draws, the saved session's own future
    assert _same([s.step(TURN) for _ in range(6)], [r.step(TURN) for _ in range(6)])


def test_gym_envs_reset_from_a_saved_session(world, tmp_path):
    from gymnasium.vector.utils import concatenate, create_empty_array

    from worldsim.envs import WorldModelEnv
    from worldsim.envs.gym_env import WorldModelVectorEnv

    s = world.open(seed=4)
    for _ in range(10):
        s.step(TURN)
    path = s.save(tmp_path / "situation.wsnap")
    env = WorldModelEnv(world)
    obs, info = env.reset(seed=1, options={"snapshot": str(path)})
    assert np.array_equal(obs, s.frame()) and info["tick"] == s.tick
    obs2, _ = env.reset(seed=1, options={"snapshot": s.snapshot()})
    assert np.array_equal(obs, obs2)
    with pytest.raises(ValueError, match="not both"):
        env.reset(options={"snapshot": str(path), "start": s.frame()})
    venv = WorldModelVectorEnv(2, world=world)
    vobs, _ = venv.reset(seed=5, options={"snapshot": str(path)})
    assert np.array_equal(vobs[0], vobs[1])  # both envs start in the saved situation ...
    one = venv.single_action_space.sample()
    act = concatenate(venv.single_action_space, [one, one], create_empty_array(venv.single_action_space, 2))
    for _ in range(6):
        vobs, *_ = venv.step(act)
    assert not np.array_equal(vobs[0], vobs[1])  # ... and go on with their own draws
    env.close()
    venv.close()


def test_worldsim_info_lists_saved_sessions(world, tmp_path, capsys):
    from worldsim.cli import main

    saves = tmp_path / "saves"
    s = world.open(seed=4)
    for _ in range(12):
        s.step(TURN)
    s.save(saves / "b.wsnap")
    fresh = world.open(seed=9)  # remembers its start context's views
    fresh.save(saves / "a.wsnap")
    assert main(["info", str(saves), "--world", "default", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [str(saves / "a.wsnap"), str(saves / "b.wsnap")]
    a, b = rows
    assert (a["world"], a["tick"], a["seed"], a["views"]) == (world.name, 0, 9, len(fresh.state.memories[0]))
    assert (b["tick"], b["seed"]) == (12, 4) and b["views"] == len(s.state.memories[0]) > 0
    assert b["bytes"] == (saves / "b.wsnap").stat().st_size and b["digest"] == world.stream_digest
    assert a["resumable"] and b["resumable"]

    # another world's save and a junk file: listed with the reason, exit 1; the good ones still listed
    _rewrite(saves / "b.wsnap", saves / "c.wsnap", edit_meta=lambda m: m.update(world="elsewhere"))
    (saves / "d.wsnap").write_bytes(b"junk")
    assert main(["info", str(saves), "--world", "default"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[0].startswith(f"{saves / 'a.wsnap'}: world {world.name}, tick 0, seed 9")
    assert "NOT resumable by" in out[2] and "a snapshot of world 'elsewhere', not of" in out[2]
    assert out[3].startswith("ERROR ") and "d.wsnap: not a readable snapshot file" in out[3]
    # without --world nothing is loaded and every readable file passes
    assert main(["info", str(saves / "c.wsnap")]) == 0 and "world elsewhere, tick 12" in capsys.readouterr().out
    assert main(["info", str(tmp_path)]) == 2  # a directory without saves: a clear error
    assert "no saved sessions" in capsys.readouterr().err
    assert main(["info", "--world", "default"]) == 2 and "--world checks saved sessions" in capsys.readouterr().err
