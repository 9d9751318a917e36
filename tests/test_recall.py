"""Memory training targets (offline retrieval by recorded pose) and latent packs for lent machines."""

import json

import numpy as np
import pytest

from worldsim.model.memory import MemoryConfig
from worldsim.train.latent_pack import pack, unpack
from worldsim.train.latents import LatentStore, load_latents
from worldsim.train.recall import recall_targets


def test_recall_finds_the_view_left_beyond_the_window_and_its_heading_difference():
    # one episode: a slow 360° spin in place (10°/tick), then a step sideways out of tolerance
    yaw = np.concatenate([np.arange(0, 370, 10.0), np.full(5, 365.0)])
    pose = np.zeros((len(yaw), 5), np.float32)
    pose[:, 3] = yaw % 360
    pose[-5:, 0] = 100.0  # 100 units away: nothing to recall
    bounds = np.array([0, len(yaw)])
    r = recall_targets(pose, bounds, MemoryConfig(), min_age=9)
    assert (r.index[:9] == -1).all()  # nothing old enough yet
    assert r.index[36] == 0 and r.weight[36] == pytest.approx(1.0)  # back at 0° after a full turn: tick 0
    assert r.index[35] == 0 and r.dyaw[35] == pytest.approx(10.0)   # 350°: tick 0 is 10° to the left
    assert r.weight[35] == pytest.approx(1 - (10 / MemoryConfig().yaw_tol) ** 2)
    assert (r.index[-5:] == -1).all()
    assert (r.index[r.index >= 0] <= np.flatnonzero(r.index >= 0) - 9).all()
    # two episodes never recall each other's views
    two = recall_targets(np.concatenate([pose, pose]), np.array([0, len(yaw), 2 * len(yaw)]), MemoryConfig(), 9)
    assert (two.index[len(yaw):][two.index[len(yaw):] >= 0] >= len(yaw)).all()


def _store(root, T=(30, 25)):
    rng = np.random.default_rng(0)
    n = sum(T)
    root.mkdir(parents=True)
    np.save(root / "frames.npy", rng.normal(size=(n, 4, 2, 2)).astype(np.float16))
    np.save(root / "audio.npy", rng.normal(size=(n, 4, 4)).astype(np.float16))
    np.save(root / "buttons.npy", rng.integers(0, 2, (n, 9)).astype(np.uint8))
    np.save(root / "axes.npy", rng.normal(size=(n, 2)).astype(np.float32))
    np.save(root / "pose.npy", rng.normal(size=(n, 5)).astype(np.float32))
    info = {"key": {}, "bounds": np.concatenate([[0], np.cumsum(T)]).tolist(), "schema": {"buttons": [], "axes": []},
            "wad": "freedoom2", "maps": ["MAP01"], "tick_rate": 17.5, "resolution": [64, 64], "audio": None}
    (root / "index.json").write_text(json.dumps(info))
    return load_latents(root)


def test_latent_pack_round_trip_in_parts(tmp_path):
    st = _store(tmp_path / "store")
    files = pack(tmp_path / "store", tmp_path / "pk", parts=2)
    assert len(files) == 2
    back: LatentStore = unpack(tmp_path / "back", files)
    assert back.bounds.tolist() == st.bounds.tolist()
    for a, b in ((back.buttons, st.buttons), (back.axes, st.axes), (back.pose, st.pose)):
        assert np.array_equal(a, b)
    for a, b in ((back.frames, st.frames), (back.audio, st.audio)):
        span = float(b.max() - b.min())
        assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= span / 255 * 0.51 + 1e-2
    one = unpack(tmp_path / "one", files[1:])  # any subset of whole episodes is a store
    assert one.bounds.tolist() == [0, 25] and np.array_equal(one.buttons, st.buttons[30:])
    (tmp_path / "junk.xz").write_bytes(b"not a pack")
    with pytest.raises(ValueError, match="not a latent pack"):
        unpack(tmp_path / "bad", [tmp_path / "junk.xz"])
    with pytest.raises(ValueError, match="--parts"):
        pack(tmp_path / "store", tmp_path / "pk2", parts=3)


def test_training_on_latents_needs_a_run_to_resume(tmp_path, capsys):
    from worldsim.cli import main

    _store(tmp_path / "store")
    assert main(["train", "--config", "tiny", "--latents", str(tmp_path / "store"), "--stage", "dynamics",
                 "--out", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "frame_codec.json" in err and "Traceback" not in err


def test_train_only_the_memory_layer_leaves_the_rest_of_the_world_untouched(tmp_path):
    import torch
    from safetensors.torch import load_file

    from worldsim.model.dynamics import Dynamics, DynamicsConfig
    from worldsim.train.dynamics_trainer import DynamicsTrainConfig, train_dynamics

    st = _store(tmp_path / "store")
    cfg = DynamicsConfig(latent_channels=4, latent_size=2, audio_channels=4, audio_positions=4, n_buttons=9,
                         n_axes=2, d_model=16, n_layers=1, n_heads=2, context=4, memory_input=True)
    tcfg = DynamicsTrainConfig(steps=4, batch=2, lr=1e-2, warmup=1, save_every=4, log_every=1, memory_windows=1.0,
                               memory_drop=0.0, train_only=("memory_in.weight",))
    train_dynamics(st, tmp_path / "run", cfg, tcfg, seed=3, progress=False)
    torch.manual_seed(3)
    init = Dynamics(cfg).state_dict()  # the trainer's initial weights (same seed)
    after = load_file(str(tmp_path / "run" / "dynamics.safetensors"))
    assert after["memory_in.weight"].abs().sum() > 0 and after["memory_in.bias"].abs().sum() == 0
    changed = [k for k in init if not torch.equal(init[k], after[k])]
    assert changed == ["memory_in.weight"]
    with pytest.raises(ValueError, match="names no parameter"):
        train_dynamics(st, tmp_path / "run2", cfg, DynamicsTrainConfig(steps=1, batch=2, train_only=("nope",)),
                       progress=False)
