"""The shipped default world: it loads, steps and is described; its start contexts' stored latents
and priming are valid and used."""

import json

import numpy as np

from tests.helpers import random_world, step_all
from worldsim.runtime import World


def test_shipped_default_world_loads_steps_and_is_described():
    import json
    import subprocess
    import sys
    from pathlib import Path

    from worldsim.model.world_model import DEFAULT_WORLD_DIR

    files = sorted(p.name for p in Path(DEFAULT_WORLD_DIR).iterdir())
    assert {"world.json", "dynamics.safetensors", "frame_codec.safetensors", "audio_codec.safetensors"} <= set(files)
    assert sum(p.stat().st_size for p in Path(DEFAULT_WORLD_DIR).iterdir()) <= 40 * 2**20  # ≤ 40 MB budget
    w = World.load("default")
    s = w.open(seed=0)
    a = s.step({"keys": ["forward"]})
    b = w.open(seed=0).step({"keys": ["turn_left"]})
    assert a.frames.shape == (1, 64, 64, 3) and a.audio.shape == (1260, 2)
    assert not np.array_equal(a.frames, b.frames)  # the action changes the very next frame
    assert a.frames.std() > 5  # a picture, not a flat field
    # real-time play of the shipped world can always shed something: a step, or the re-aim below one step
    from worldsim.runtime.clock import StepGovernor
    gov = StepGovernor.for_world(w, 1 / w.tick_rate)
    assert gov.bottom < gov.max_steps and gov.max_steps == w.model.sampler.cfg.steps
    lit = w.open(seed=0).step({"keys": ["forward"]}, light_prior=True)
    assert lit.timings["light_prior"] == 1.0 and lit.frames.std() > 5
    out = subprocess.run([sys.executable, "-m", "worldsim.cli", "info", "--json"], capture_output=True, text=True, timeout=120)
    dw = json.loads(out.stdout)["default_world"]
    assert dw["wad"] == "freedoom2" and dw["maps"] == ["MAP01"] and dw["tick_rate"] == 17.5 and dw["resolution"] == [64, 64]


def test_reopening_a_shipped_start_reuses_its_priming_and_changes_nothing():
    """The network's half of priming a shipped start runs once per world; later sessions on that
    start copy it, keep their own seed's noise and fill their own scene memory."""
    w = World.load("default")
    acts = [{"keys": ["forward"]}, {"keys": ["turn_left"], "mouse": [3.0, 0.0]}, {"keys": ["attack"]}]
    n = len(w.starts)
    assert n > 1 and not w._primed
    first = step_all(w.open(seed=3), acts)  # primes start 3 and keeps its state
    assert set(w._primed) == {3}
    again = w.open(seed=3)  # from the kept state, after the first session stepped on
    assert again.tick == 0 and again._state.memories[0] is not None and again._state.memories[0].hits == 0
    second = step_all(again, acts)
    for a, b in zip(first, second):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    other = step_all(w.open(seed=3 + n), acts)  # same start, another seed: its own noise
    assert set(w._primed) == {3}
    assert any(not np.array_equal(a.frames, b.frames) for a, b in zip(first, other))
    fresh = World.load("default")  # a world that never primed start 3 answers the same
    for a, b in zip(step_all(fresh.open(seed=3 + n), acts), other):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)


def test_shipped_starts_open_from_their_stored_latents(tmp_path):
    """A world's starts file may carry its contexts' latents (``encode_starts``; ``worldsim
    export`` writes them): opening a shipped start then runs no encoder. Latents made by other
    codecs than the world's (digest mismatch) are ignored."""
    import torch
    from safetensors.torch import load_file, save_file

    from worldsim.runtime.starts import codec_digest, encode_starts
    root = random_world(tmp_path / "w")
    assert World.load(root).starts.latents(0) is None
    encode_starts(root)
    w = World.load(root)
    z, za = w.starts.latents(1)
    ctx = w.starts.context(None, 1)
    fp32 = World.load(root, precision="fp32").model  # the latents are encoded in fp32, whatever runs them
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(z), fp32.frame_codec.encode(torch.as_tensor(ctx["frames"])),
                                   rtol=1e-4, atol=1e-4)
        assert za.shape == (len(ctx["frames"]), w.model.dynamics.cfg.audio_dim)
    calls = []
    for codec in (w.model.frame_codec, w.model.audio_codec):
        codec.encode = lambda *a, _f=codec.encode: calls.append(1) or _f(*a)
    s = w.open(seed=1)
    assert not calls  # the context came from the file
    acts = [{"keys": ["forward"]}, {"keys": ["attack"]}]
    again = step_all(World.load(root).open(seed=1), acts)
    for a, b in zip(step_all(s, acts), again):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)

    starts = root / "starts.safetensors"  # latents without a digest are not trusted either
    kept = load_file(str(starts))
    save_file({k: v for k, v in kept.items() if k != "codec_digest"}, str(starts))
    assert World.load(root).starts.latents(1) is None
    save_file(kept, str(starts))
    assert World.load(root).starts.latents(1) is not None

    f = root / "frame_codec.safetensors"  # another frame codec: the stored latents are stale
    sd = load_file(str(f))
    save_file({k: v + 0.01 for k, v in sd.items()}, str(f))
    assert not np.array_equal(codec_digest(root), load_file(str(root / "starts.safetensors"))["codec_digest"].numpy())
    stale = World.load(root)
    assert stale.starts.latents(1) is None
    assert stale.open(seed=1).step().frames.shape == (1, 64, 64, 3)


def test_the_default_worlds_starts_carry_valid_latents_and_priming():
    """The shipped world's starts file matches the files beside it (its digests): a first open of
    a shipped start restores a stored priming instead of running the network. A ship step that
    edits the world after ``encode_starts`` without running it again fails here."""
    w = World.load("default")
    assert len(w.starts) >= 1
    for k in range(len(w.starts)):
        assert w.starts.latents(k) is not None, f"start {k}: stale latents"
        assert w.starts.primed(k) is not None, f"start {k}: stale priming (run worldsim.runtime.starts.encode_starts)"


def test_shipped_starts_open_from_their_stored_priming(tmp_path):
    """``encode_starts`` also stores the network's state after priming on each start: a first
    open of a shipped start then runs no forward and continues exactly as live priming would;
    a state made by other dynamics weights (digest mismatch) is ignored."""
    from safetensors.torch import load_file, save_file

    from worldsim.runtime.starts import PRIMED, encode_starts
    root = random_world(tmp_path / "w")
    encode_starts(root)
    acts = [{"keys": ["forward"]}, {"keys": ["turn_left"], "mouse": [2.0, 0.0]}, {"keys": ["attack"]}]
    live = World.load(root, precision="fp32")  # the same file without the stored state: primes at open
    live.starts.arrays = {k: v for k, v in live.starts.arrays.items() if not k.startswith(PRIMED)}
    assert live.starts.primed(2) is None
    expect = step_all(live.open(seed=2), acts)

    w = World.load(root, precision="fp32")
    calls = []
    dyn = w.model.dynamics
    dyn.stream = lambda *a, _f=dyn.stream, **k: calls.append(1) or _f(*a, **k)
    s = w.open(seed=2)
    assert not calls and set(w._primed) == {2}  # restored, not primed
    for a, b in zip(step_all(s, acts), expect):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert w.open(seed=5).step().frames.shape == (1, 64, 64, 3)  # every start has one

    meta = json.loads((root / "dynamics.json").read_text())  # a note in the meta: still valid
    meta.setdefault("meta", {})["note"] = "a history entry written after encode_starts"
    (root / "dynamics.json").write_text(json.dumps(meta))
    assert World.load(root).starts.primed(2) is not None
    meta["config"]["turn_weights"] = [1.0, 0.0, 0.5]  # another turn prior: stale
    (root / "dynamics.json").write_text(json.dumps(meta))
    assert World.load(root).starts.primed(2) is None

    f = root / "dynamics.safetensors"  # other dynamics weights: the stored state is stale
    sd = load_file(str(f))
    save_file({k: v + 0.01 for k, v in sd.items()}, str(f))
    stale = World.load(root)
    assert stale.starts.primed(2) is None and stale.starts.latents(2) is not None  # the latents still fit
    assert stale.open(seed=2).step().frames.shape == (1, 64, 64, 3)
