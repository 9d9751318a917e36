"""The world model: codecs, dynamics + KV cache, sampler, checkpoints, streaming contract."""

import json

import numpy as np
import pytest
import torch

from worldsim.model.audio_codec import AudioCodec, AudioCodecConfig
from worldsim.model.checkpoint import CheckpointError, load_component, save_component
from worldsim.model.action_inputs import shift_latent, turn_prior
from worldsim.model.dynamics import Dynamics, DynamicsConfig
from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
from worldsim.model.kv_cache import KVCache
from worldsim.model.sampler import FlowSampler, FlowSamplerConfig


def _random_dynamics(**kw) -> Dynamics:
    torch.manual_seed(0)
    cfg = DynamicsConfig(d_model=32, n_layers=2, n_heads=2, context=4, turn_weights=(6.0, 4.5, 1.0), **kw)
    m = Dynamics(cfg)
    with torch.no_grad():
        for p in m.parameters():  # adaLN-zero starts as identity: perturb so every path matters
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _blocks(m: Dynamics, B: int, T: int):
    c = m.cfg
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, T, c.frame_tokens, c.token_dim, generator=g), torch.randn(B, T, c.audio_dim, generator=g),
            torch.randn(B, T, c.frame_tokens, c.token_dim, generator=g), torch.rand(B, T, generator=g),
            torch.randn(B, T, c.action_dim, generator=g))


def test_codec_shapes_and_roundtrip_types():
    fc = FrameCodec(FrameCodecConfig(channels=(8, 16, 16), latent_channels=4))
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    z = fc.encode(x)
    assert z.shape == (3, 4, 8, 8)
    y = fc.decode(z)
    assert y.shape == x.shape and y.dtype == torch.uint8
    ac = AudioCodec(AudioCodecConfig(widths=(8, 8, 16), latent_channels=4))
    a = torch.randint(-2000, 2000, (3, 1260, 2), dtype=torch.int16)
    za = ac.encode(a)
    assert za.shape == (3, 4, 4)
    b = ac.decode(za)
    assert b.shape == a.shape and b.dtype == torch.int16
    with pytest.raises(ValueError, match="multiple"):
        AudioCodec(AudioCodecConfig(samples=1000))
    light = AudioCodec(AudioCodecConfig(widths=(8, 8, 16), latent_channels=4, decoder_widths=(4, 4, 8)))
    assert light.decode(za).shape == a.shape  # a lighter decoder reads the same latents
    assert sum(p.numel() for p in light.decoder.parameters()) < sum(p.numel() for p in ac.decoder.parameters())
    with pytest.raises(ValueError, match="decoder_widths needs one width per stride"):
        AudioCodec(AudioCodecConfig(decoder_widths=(8, 8)))


def test_codecs_learn_on_tiny_data():
    torch.manual_seed(0)
    fc = FrameCodec(FrameCodecConfig(channels=(8, 16, 16), latent_channels=4))
    x = torch.zeros(8, 64, 64, 3, dtype=torch.uint8)
    x[:, :, ::8] = 200
    opt = torch.optim.Adam(fc.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss, stats = fc.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or stats["psnr"]
    assert stats["psnr"] > first + 3


def test_streaming_with_kv_cache_equals_full_recompute():
    m = _random_dynamics()
    B, T = 2, 7  # longer than the context: the ring buffer must roll
    fr, au, pr, lv, act = _blocks(m, B, T)
    with torch.no_grad():
        full_f, full_a = m(fr, au, pr, lv, act, torch.arange(T), torch.zeros(T, dtype=torch.bool))
        cache = m.new_cache(B, dtype=torch.float32)
        for t in range(T):
            sf, sa = m.step(cache, fr[:, t:t + 1], au[:, t:t + 1], pr[:, t:t + 1], lv[:, t:t + 1], act[:, t:t + 1],
                            torch.full((B,), 1000 + t), commit=True)
            torch.testing.assert_close(sf[:, 0], full_f[:, t], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(sa[:, 0], full_a[:, t], atol=1e-5, rtol=1e-4)
        # a noisy block (not committed) sees the same thing as in the packed training sequence
        noisy = torch.randn(B, 1, m.cfg.frame_tokens, m.cfg.token_dim)
        seq = torch.cat([fr, noisy], 1)
        f2, _ = m(seq, torch.cat([au, au[:, -1:]], 1), torch.cat([pr, pr[:, -1:]], 1), torch.cat([lv, lv[:, -1:]], 1),
                  torch.cat([act, act[:, -1:]], 1), torch.cat([torch.arange(T), torch.tensor([T])]),
                  torch.tensor([False] * T + [True]))
        before = cache.snapshot()
        sf, _ = m.step(cache, noisy, au[:, -1:], pr[:, -1:], lv[:, -1:], act[:, -1:], torch.full((B,), 1000 + T), commit=False)
        torch.testing.assert_close(sf[:, 0], f2[:, -1], atol=1e-5, rtol=1e-4)
        assert all(torch.equal(a, b) for a, b in zip(before.k, cache.k)), "a non-committing step changed the cache"


def test_fused_commit_and_step_equals_commit_then_step():
    """The runtime commits tick t in the same forward as tick t+1's first denoising pass."""
    m = _random_dynamics()
    B, T = 2, 6
    fr, au, pr, lv, act = _blocks(m, B, T)
    noisy = torch.randn(B, 1, m.cfg.frame_tokens, m.cfg.token_dim)
    with torch.no_grad():
        a, b = m.new_cache(B, dtype=torch.float32), m.new_cache(B, dtype=torch.float32)
        for t in range(T - 1):
            for c in (a, b):
                m.step(c, fr[:, t:t + 1], au[:, t:t + 1], pr[:, t:t + 1], lv[:, t:t + 1], act[:, t:t + 1],
                       torch.full((B,), 10 + t), commit=True)
        tl = torch.full((B,), 10 + T - 1)
        m.step(a, fr[:, -1:], au[:, -1:], pr[:, -1:], lv[:, -1:], act[:, -1:], tl, commit=True)
        sf, sa = m.step(a, noisy, au[:, -1:], pr[:, -1:], lv[:, -1:], act[:, -1:], tl + 1, commit=False)
        ff, fa = m.commit_and_step(b, torch.cat([fr[:, -1:], noisy], 1), torch.cat([au[:, -1:], au[:, -1:]], 1),
                                   torch.cat([pr[:, -1:], pr[:, -1:]], 1), torch.cat([lv[:, -1:], lv[:, -1:]], 1),
                                   torch.cat([act[:, -1:], act[:, -1:]], 1), tl + 1)
    assert ff.shape[1] == 1 and fa.shape[1] == 1  # the committed block's outputs are not computed
    torch.testing.assert_close(ff[:, 0], sf[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fa[:, 0], sa[:, 0], atol=1e-5, rtol=1e-4)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.k + a.v, b.k + b.v)) and torch.equal(a.time, b.time)


def test_skipping_the_committed_blocks_outputs_changes_nothing_else():
    """clean_outputs=False: the last layer computes only the committed blocks' keys/values."""
    m = _random_dynamics()
    B, T = 2, 4
    fr, au, pr, lv, act = _blocks(m, B, T)
    with torch.no_grad():
        a, b = m.new_cache(B, dtype=torch.float32), m.new_cache(B, dtype=torch.float32)
        mods = m.modulate(m.condition(lv, act))
        times = torch.arange(T).expand(B, T)
        fa_, aa = m.stream(a, fr, au, pr, mods, times, 2)
        fb, ab = m.stream(b, fr, au, pr, mods, times, 2, clean_outputs=False)
        assert fb.shape[1] == ab.shape[1] == T - 2
        torch.testing.assert_close(fb, fa_[:, 2:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ab, aa[:, 2:], atol=1e-5, rtol=1e-4)
        assert all(torch.equal(x, y) for x, y in zip(a.k + a.v, b.k + b.v))
        # all blocks committed and no output wanted (priming): empty velocities, same cache
        c, d = m.new_cache(B, dtype=torch.float32), m.new_cache(B, dtype=torch.float32)
        m.stream(c, fr, au, pr, mods, times, T)
        fe, ae = m.stream(d, fr, au, pr, mods, times, T, clean_outputs=False)
        assert fe.shape[1] == 0 and ae.shape[1] == 0
        assert all(torch.equal(x, y) for x, y in zip(c.k + c.v, d.k + d.v)) and torch.equal(c.time, d.time)


def test_priming_a_context_in_one_forward_equals_committing_it_block_by_block():
    m = _random_dynamics()
    B, T = 2, 3  # ≤ context - 1 blocks, as priming commits
    fr, au, pr, lv, act = _blocks(m, B, T)
    lv = torch.zeros_like(lv)
    with torch.no_grad():
        a, b = m.new_cache(B, dtype=torch.float32), m.new_cache(B, dtype=torch.float32)
        for t in range(T):
            m.step(a, fr[:, t:t + 1], au[:, t:t + 1], pr[:, t:t + 1], lv[:, t:t + 1], act[:, t:t + 1],
                   torch.full((B,), t), commit=True)
        m.stream(b, fr, au, pr, m.modulate(m.condition(lv, act)), torch.arange(T).expand(B, T), T)
    assert torch.equal(a.time, b.time) and torch.equal(a.cursor, b.cursor)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.k + a.v, b.k + b.v))


def test_kv_cache_snapshot_select_cat():
    c = KVCache(n_layers=2, batch=3, heads=2, head_dim=4, slots=2, block_tokens=5, dtype=torch.float32)
    for layer in range(2):
        c.append(layer, torch.ones(3, 2, 5, 4), torch.ones(3, 2, 5, 4))
    c.commit(torch.tensor([0, 5, 9]))
    snap = c.snapshot()
    for layer in range(2):
        c.append(layer, 2 * torch.ones(3, 2, 5, 4), torch.ones(3, 2, 5, 4))
    c.commit(torch.tensor([1, 6, 10]))
    assert c.time.tolist() == [[0, 1], [5, 6], [9, 10]]
    c.restore(snap)
    assert c.time.tolist() == [[0, -1], [5, -1], [9, -1]] and float(c.k[0][:, :, 5:].abs().sum()) == 0
    sub = c.select([2, 0])
    assert sub.time[:, 0].tolist() == [9, 0]
    both = KVCache.cat([sub, c.select([1])])
    assert both.batch == 3 and both.time[:, 0].tolist() == [9, 0, 5]
    with pytest.raises(RuntimeError, match="staged"):
        c.append(0, torch.ones(3, 2, 5, 4), torch.ones(3, 2, 5, 4))
        c.commit(torch.tensor([1, 1, 1]))


def test_kv_cache_extended_equals_the_concatenation_and_leaves_the_slots_alone():
    """Attention reads the cache followed by a forward's new rows: written into the spare room
    after the slots when they fit, else concatenated — the same tensor either way, and neither
    touches what snapshots, restores and files see (the slots), nor survives a select or cat."""
    g = torch.Generator().manual_seed(1)
    c = KVCache(n_layers=2, batch=3, heads=2, head_dim=4, slots=2, block_tokens=5, dtype=torch.float32)
    for layer in range(2):
        c.append(layer, torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g))
    c.commit(torch.tensor([0, 5, 9]))
    before = c.snapshot()
    for n in (5, 10, 15):  # one block, two (a streaming tick: the spare room), three (priming: concatenated)
        k, v = torch.randn(3, 2, n, 4, generator=g), torch.randn(3, 2, n, 4, generator=g)
        ek, ev = c.extended(1, k, v)
        assert ek.shape == (3, 2, 10 + n, 4)
        assert torch.equal(ek, torch.cat([c.k[1], k], 2)) and torch.equal(ev, torch.cat([c.v[1], v], 2))
        assert c.k[1].shape == (3, 2, 10, 4)
        assert all(torch.equal(a, b) for a, b in zip(before.k + before.v, c.k + c.v))
    assert c.select([1]).k[0].shape == (1, 2, 10, 4) and KVCache.cat([c, c]).v[1].shape == (6, 2, 10, 4)
    assert torch.equal(KVCache.cat([c.select([2]), c.select([0])]).k[1], c.k[1][[2, 0]])


def test_kv_cache_commit_writes_the_same_whether_rows_share_a_slot_or_not():
    """Rows whose cursors agree take a plain copy into one slot, rows at different slots a scatter:
    both must leave every row's keys, values and ticks where the ring says."""
    g = torch.Generator().manual_seed(0)
    kv = [torch.randn(3, 2, 2 * 5, 4, generator=g) for _ in range(4)]  # two blocks per commit, 2 layers × k/v

    def run(cursors: list[int]) -> KVCache:
        c = KVCache(n_layers=2, batch=3, heads=2, head_dim=4, slots=3, block_tokens=5, dtype=torch.float32)
        c.cursor = torch.tensor(cursors)
        for layer in range(2):
            c.append(layer, kv[2 * layer], kv[2 * layer + 1])
        c.commit(torch.tensor([[4, 5], [4, 5], [4, 5]]))
        return c

    same, mixed = run([2, 2, 2]), run([2, 0, 1])
    assert same.cursor.tolist() == [1, 1, 1] and mixed.cursor.tolist() == [1, 2, 0]
    for c, cursors in ((same, [2, 2, 2]), (mixed, [2, 0, 1])):
        for b, start in enumerate(cursors):
            for j in range(2):  # block j of the commit went to slot start + j (mod 3)
                slot = (start + j) % 3
                assert c.time[b, slot] == 4 + j
                for layer in range(2):
                    torch.testing.assert_close(c.k[layer][b, :, slot * 5:(slot + 1) * 5], kv[2 * layer][b, :, j * 5:(j + 1) * 5])
                    torch.testing.assert_close(c.v[layer][b, :, slot * 5:(slot + 1) * 5], kv[2 * layer + 1][b, :, j * 5:(j + 1) * 5])


def test_turn_prior_slides_the_right_way():
    z = torch.zeros(1, 1, 8, 8)
    z[0, 0, :, 4] = 1.0
    assert shift_latent(z, torch.tensor([1.0]))[0, 0, 0].argmax() == 3  # right turn: scene moves left
    cfg = DynamicsConfig(turn_weights=(8.0, 0.0, 0.0), px_per_degree=1.0, frame_size=64, latent_size=8)
    right = turn_prior(z, torch.tensor([[1.0, 0.0, 0.0]]), cfg)
    left = turn_prior(z, torch.tensor([[-1.0, 0.0, 0.0]]), cfg)
    assert right[0, 0, 0].argmax() == 3 and left[0, 0, 0].argmax() == 5


class _BarCodec:
    """A stand-in codec for the pixel prior: a latent column k is pixel columns 8k..8k+7."""

    def decode(self, z):
        img = (z[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)  # (N, 8, 8)
        img = img.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (N, 64, 64)
        return img[..., None].expand(-1, -1, -1, 3).contiguous()  # (N, 64, 64, 3) uint8

    def encode(self, frames):
        x = frames[..., 0].float()[:, None] / 255  # (N, 1, 64, 64)
        return torch.nn.functional.avg_pool2d(x, 8)  # (N, 1, 8, 8)


def test_pixel_turn_prior_reaims_the_picture_the_right_way():
    from worldsim.model.view_warp import LatentReaim
    z = torch.zeros(2, 1, 8, 8)
    z[:, 0, :, 4] = 1.0
    cfg = DynamicsConfig(turn_weights=(12.0, 0.0, 0.0), latent_size=8, prior_space="pixel")
    feats = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="needs the frame codec"):
        turn_prior(z, feats, cfg)
    out = turn_prior(z, feats, cfg, LatentReaim(_BarCodec(), fov=90.0))
    assert out.shape == z.shape
    cols = out[:, 0].mean(1)  # (2, 8) mass per latent column
    assert cols[0, :4].sum() > cols[0, 5:].sum()  # right turn: the bar moves left
    assert cols[1, 5:].sum() > cols[1, :4].sum()  # left turn: right
    still = turn_prior(z, torch.zeros(2, 3), cfg, LatentReaim(_BarCodec()))
    torch.testing.assert_close(still, z)  # no turn: the picture comes back as it was
    keep = torch.zeros(64, 64, dtype=torch.bool)
    keep[:, 32:40] = True  # screen-fixed pixels stay where they are
    kept = turn_prior(z, feats, cfg, LatentReaim(_BarCodec(), keep=keep))
    torch.testing.assert_close(kept[:, 0, :, 4], z[:, 0, :, 4])
    with pytest.raises(ValueError, match="prior_space"):
        DynamicsConfig(prior_space="pixels").validate()


def test_pixel_prior_keeps_the_latent_of_rows_turning_less_than_reaim_min_deg():
    """Rows under the threshold skip the decode + encode (their prior is the latent as it is); the
    others are re-aimed exactly as without a threshold, their shown pictures picked row for row."""
    from worldsim.model.view_warp import LatentReaim

    class Counting(_BarCodec):
        decoded = encoded = 0

        def decode(self, z):
            Counting.decoded += len(z)
            return super().decode(z)

        def encode(self, frames):
            Counting.encoded += len(frames)
            return super().encode(frames)

    g = torch.Generator().manual_seed(1)
    z = torch.rand(3, 1, 8, 8, generator=g) + 0.05  # a round trip would change these: not a fixed point
    yaw = torch.tensor([0.4, -12.0, 20.0])  # degrees: row 0 under 1°, the others well over
    cfg = DynamicsConfig(turn_weights=(1.0, 0.0, 0.0), latent_size=8, prior_space="pixel", reaim_min_deg=1.0)
    cfg.validate()
    feats = torch.stack([yaw, torch.zeros(3), torch.zeros(3)], 1)
    full = turn_prior(z, feats, cfg, LatentReaim(_BarCodec()))
    out = turn_prior(z, feats, cfg, LatentReaim(Counting(), min_deg=cfg.reaim_min_deg))
    assert Counting.decoded == Counting.encoded == 2  # only the turning rows
    torch.testing.assert_close(out[0], z[0])
    assert not torch.allclose(full[0], z[0])
    torch.testing.assert_close(out[1:], full[1:])
    shown = _BarCodec().decode(z)  # the runtime passes what it showed: rows must stay paired with theirs
    torch.testing.assert_close(LatentReaim(_BarCodec(), min_deg=1.0)(z, yaw, shown)[1:], full[1:])
    torch.testing.assert_close(LatentReaim(_BarCodec(), min_deg=1.0)(z, torch.zeros(3)), z)
    with pytest.raises(ValueError, match="reaim_min_deg"):
        DynamicsConfig(reaim_min_deg=-1.0).validate()


def test_sampler_integrates_a_constant_velocity():
    s = FlowSampler(FlowSamplerConfig(steps=4, shift=2.0))
    ts = s.timesteps()
    assert ts[0] == 1.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))
    x0 = torch.randn(5)
    eps = torch.randn(5)
    out = s.sample(lambda xs, t: [eps - x0], [eps])
    torch.testing.assert_close(out[0], x0)
    with pytest.raises(ValueError):
        FlowSampler(FlowSamplerConfig(steps=0))
    # temperature scales the start noise only: with no velocity the sample is that scaled noise
    cold = FlowSampler(FlowSamplerConfig(steps=2, temperature=0.5))
    torch.testing.assert_close(cold.sample(lambda xs, t: [torch.zeros_like(xs[0])], [eps])[0], 0.5 * eps)
    with pytest.raises(ValueError, match="temperature"):
        FlowSampler(FlowSamplerConfig(temperature=0.0))


def test_checkpoint_errors_are_clear(tmp_path):
    m = _random_dynamics()
    save_component(tmp_path, "dynamics", m, m.cfg, dtype=torch.bfloat16)
    loaded, _ = load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)
    assert loaded.cfg == m.cfg
    # config no longer matching the weights
    d = json.loads((tmp_path / "dynamics.json").read_text())
    d["config"]["d_model"] = 64
    (tmp_path / "dynamics.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="do not match"):
        load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)
    d["config"]["d_model"] = 32
    d["config"]["bogus"] = 1
    (tmp_path / "dynamics.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="unknown key"):
        load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)
    del d["config"]["bogus"]
    d["version"] = 99
    (tmp_path / "dynamics.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="version"):
        load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)
    d["version"] = 1
    (tmp_path / "dynamics.json").write_text(json.dumps(d))
    raw = (tmp_path / "dynamics.safetensors").read_bytes()
    (tmp_path / "dynamics.safetensors").write_bytes(raw[: len(raw) // 3])  # truncated download
    with pytest.raises(CheckpointError, match="unreadable|do not match"):
        load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)
    (tmp_path / "dynamics.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)


def test_memory_input_starts_silent_and_streams_like_full_recompute():
    """A world gains the memory input without changing its outputs (zero layer), and once the
    layer is trained a noisy block with a memory streams exactly as in the packed sequence."""
    base, mem = _random_dynamics(), _random_dynamics(memory_input=True)
    mem.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        mem.memory_in.weight.zero_()
        mem.memory_in.bias.zero_()
    B, T = 2, 5
    fr, au, pr, lv, act = _blocks(base, B, T)
    times, noisy = torch.arange(T), torch.tensor([False] * (T - 1) + [True])
    zm = torch.randn(B, T, base.cfg.latent_channels, base.cfg.latent_size, base.cfg.latent_size)
    w = torch.tensor([[0.0] * (T - 1) + [0.8]] * B)
    with torch.no_grad():
        f0, _ = base(fr, au, pr, lv, act, times, noisy)
        f1, _ = mem(fr, au, pr, lv, act, times, noisy, mem.memory_tokens(zm, w))
        torch.testing.assert_close(f0, f1)
        mem.memory_in.weight.normal_(0, 0.1)
        mem.memory_in.bias.normal_(0, 0.1)
        tok = mem.memory_tokens(zm, w)
        full, _ = mem(fr, au, pr, lv, act, times, noisy, tok)
        unused, _ = mem(fr, au, pr, lv, act, times, noisy, mem.memory_tokens(zm, torch.zeros_like(w)))
        assert not torch.allclose(full[:, -1], unused[:, -1], atol=1e-4)  # the memory reaches the noisy block
        torch.testing.assert_close(full[:, :-1], unused[:, :-1])          # ... and nothing else
        cache = mem.new_cache(B, dtype=torch.float32)
        for t in range(T - 1):  # clean blocks: no memory (None = zero weight)
            mem.step(cache, fr[:, t:t + 1], au[:, t:t + 1], pr[:, t:t + 1], lv[:, t:t + 1], act[:, t:t + 1],
                     torch.full((B,), t), commit=True)
        sf, _ = mem.step(cache, fr[:, -1:], au[:, -1:], pr[:, -1:], lv[:, -1:], act[:, -1:], torch.full((B,), T - 1),
                         commit=False, memory=tok[:, -1:])
    torch.testing.assert_close(sf[:, 0], full[:, -1], atol=1e-5, rtol=1e-4)


def test_a_checkpoint_without_the_memory_layer_loads_into_a_model_with_it(tmp_path):
    m = _random_dynamics()
    save_component(tmp_path, "dynamics", m, m.cfg)
    d = json.loads((tmp_path / "dynamics.json").read_text())
    d["config"]["memory_input"] = True
    (tmp_path / "dynamics.json").write_text(json.dumps(d))
    loaded, _ = load_component(tmp_path, "dynamics", Dynamics, DynamicsConfig)
    assert loaded.memory_in is not None and not loaded.memory_in.weight.any()
    torch.testing.assert_close(loaded.frame_in.weight, m.frame_in.weight)


def test_the_2d_audio_codec_paths_code_like_the_1d_ones():
    torch.manual_seed(0)
    ac = AudioCodec(AudioCodecConfig(widths=(8, 8, 16), latent_channels=4)).eval()
    with torch.no_grad():
        for p in ac.parameters():  # the res blocks' second convs start at zero: make every path count
            p.add_(0.1 * torch.randn_like(p))
        z = torch.randn(3, 4, 4)
        x = 0.3 * torch.randn(3, 2, ac.cfg.samples)
        ref, ref_enc = ac.decode_raw(z), ac.encode_raw(x)
        ac.freeze_for_inference()
        fast, fast_enc = ac.decode_raw(z), ac.encode_raw(x)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    assert fast_enc.shape == ref_enc.shape == (3, 4, ac.cfg.positions) and fast_enc.is_contiguous()
    assert ac.encode((3000 * torch.randn(3, ac.cfg.samples, 2)).to(torch.int16)).view(3, -1).shape == (3, 4 * ac.cfg.positions)
    torch.testing.assert_close(fast_enc, ref_enc, atol=1e-5, rtol=1e-4)
    for name in ("_decoder_2d", "_encoder_2d"):
        assert name not in dict(ac.named_modules()) and not any("2d" in k for k in ac.state_dict())
    ac.train()
    with torch.enable_grad():  # training still runs (and differentiates) the 1-D decoder
        y = ac.decode_raw(z.requires_grad_())
        y.sum().backward()
    assert ac.decoder[0].weight.grad is not None


def test_packed_linears_compute_what_the_layers_do():
    """CPU fp32 inference runs the dynamics' linears through oneDNN with packed weights (GELU
    fused): the same outputs as the plain layers; a weight changed in place or replaced by
    ``.to()`` is packed again; with autograd on, the plain layers run."""
    from worldsim.model import packed_linear
    if not packed_linear.AVAILABLE:
        pytest.skip("this torch build has no oneDNN linear")
    lin = torch.nn.Linear(32, 48)
    x = torch.randn(2, 5, 32)  # (B, L, D): leading dims are flattened for oneDNN and restored
    with torch.no_grad():
        torch.testing.assert_close(packed_linear.apply(lin, x), lin(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed_linear.apply(lin, x, gelu=True), torch.nn.functional.gelu(lin(x)),
                                   rtol=1e-5, atol=1e-5)
        lin.weight.mul_(2)  # in place: the version changes
        torch.testing.assert_close(packed_linear.apply(lin, x), lin(x), rtol=1e-5, atol=1e-5)
        lin.load_state_dict({"weight": torch.randn(48, 32), "bias": torch.zeros(48)})
        torch.testing.assert_close(packed_linear.apply(lin, x), lin(x), rtol=1e-5, atol=1e-5)
        lin.to(torch.float64).to(torch.float32)  # new storage
        torch.testing.assert_close(packed_linear.apply(lin, x), lin(x), rtol=1e-5, atol=1e-5)
    packed_linear.apply(lin, x, gelu=True).sum().backward()  # training: the plain, differentiable path
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0

    m = _random_dynamics()
    frame, audio, prior, level, action = _blocks(m, 2, 4)
    times, noisy = torch.arange(4), torch.tensor([False, False, True, True])
    with torch.no_grad():
        fast = m(frame, audio, prior, level, action, times, noisy)
        packed_linear.enabled = False
        try:
            plain = m(frame, audio, prior, level, action, times, noisy)
        finally:
            packed_linear.enabled = True
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_attention_computes_what_the_plain_form_does():
    """Inference in fp32 attends through SDPA with the per-block bias spread over each block's
    tokens; the plain form (bf16 CPU inference, training) gives the same outputs, masked pairs
    included, and with autograd on the plain form runs, so the tick-distance bias still learns."""
    from worldsim.model import attention as D
    g = torch.Generator().manual_seed(3)
    B, H, N, Dh, Mq, Mk = 2, 2, 5, 8, 2, 4
    q = torch.randn(B, H, Mq * N, Dh, generator=g)
    k, v = torch.randn(2, B, H, Mk * N, Dh, generator=g)
    bias = torch.randn(1, H, Mq, Mk, generator=g)
    bias[..., 0, 3] = float("-inf")  # a masked pair of blocks
    with torch.no_grad():
        fused = D.attention(q, k, v, bias, N)  # fp32: auto picks SDPA
        D.ATTENTION_KERNEL = "plain"
        try:
            plain = D.attention(q, k, v, bias, N)
        finally:
            D.ATTENTION_KERNEL = "auto"
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    # by hand: token i of query block 0 ignores key block 3 entirely
    logits = (q @ k.transpose(-1, -2)) / Dh ** 0.5 + bias.repeat_interleave(N, 2).repeat_interleave(N, 3)
    ref = torch.einsum("bhqk,bhkd->bqhd", logits.softmax(-1), v).flatten(2)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    table = torch.zeros(1, H, Mq, Mk, requires_grad=True)
    D.attention(q, k, v, table, N).square().sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0

    m = _random_dynamics()  # a whole packed forward, both kernels
    frame, audio, prior, level, action = _blocks(m, 2, 4)
    times, noisy = torch.arange(4), torch.tensor([False, False, True, True])
    with torch.no_grad():
        fast = m(frame, audio, prior, level, action, times, noisy)
        D.ATTENTION_KERNEL = "plain"
        try:
            slow = m(frame, audio, prior, level, action, times, noisy)
        finally:
            D.ATTENTION_KERNEL = "auto"
    assert D.streaming_kernel(torch.float32, "cpu") == "sdpa" and D.streaming_kernel(torch.bfloat16, "cpu") == "plain"
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
