"""The DIAMOND speed baseline: shapes, determinism, architecture, cost estimates, input checks."""

import pytest
import torch

from worldsim.bench.diamond import DiamondBaseline, DiamondConfig, DiamondUNet, ResBlock, SelfAttention2d


def _frames(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 4, 64, 64, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def model() -> DiamondBaseline:
    torch.set_num_threads(1)
    return DiamondBaseline(seed=0)


@pytest.mark.parametrize("b", [1, 2])
def test_step_shapes_and_dtype(model, b):
    model.reset(_frames(b))
    for _ in range(2):  # the second step runs on a context that holds a generated frame
        out = model.step(torch.zeros(b, model.cfg.n_actions))
        assert out.shape == (b, 64, 64, 3) and out.dtype == torch.uint8
    assert model.context.shape == (b, 12, 64, 64)


def test_unet_forward_shape():
    cfg = DiamondConfig()
    net = DiamondUNet(cfg)
    y = net(torch.randn(2, 3, 64, 64), torch.zeros(2), torch.randn(2, 12, 64, 64), torch.zeros(2, cfg.n_actions))
    assert y.shape == (2, 3, 64, 64)


def test_same_seed_same_frames():
    a, b, c = DiamondBaseline(seed=0), DiamondBaseline(seed=0), DiamondBaseline(seed=1)
    actions = torch.eye(a.cfg.n_actions)[[3]]
    for m in (a, b, c):
        m.reset(_frames(1))
    for _ in range(2):
        fa, fb, fc = a.step(actions), b.step(actions), c.step(actions)
        assert torch.equal(fa, fb)
        assert not torch.equal(fa, fc)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DiamondBaseline(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_attention_only_at_8x8(model):
    blocks = [m for m in model.net.modules() if isinstance(m, ResBlock)]
    assert {b.resolution for b in blocks} == {64, 32, 16, 8}
    for b in blocks:
        assert isinstance(b.attn, SelfAttention2d) == (b.resolution == 8), b.resolution
    assert sum(isinstance(b.attn, SelfAttention2d) for b in blocks) > 0


def test_param_count_plausible(model):
    # DIAMOND's Atari denoiser has ~4.4M parameters
    assert 3_000_000 < model.param_count() < 6_000_000


def test_flops_per_step(model):
    flops = model.flops_per_step()
    assert flops > 1e9
    assert model.flops_per_step() == flops  # cached


def test_bad_shapes_raise(model):
    with pytest.raises(ValueError, match="reset expects frames of shape"):
        model.reset(torch.zeros(1, 3, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="reset expects frames of shape"):
        model.reset(torch.zeros(4, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.reset(torch.zeros(1, 4, 64, 64, 3))
    model.reset(_frames(2))
    with pytest.raises(ValueError, match="step expects actions of shape"):
        model.step(torch.zeros(1, model.cfg.n_actions))
    with pytest.raises(ValueError, match="step expects actions of shape"):
        model.step(torch.zeros(2, model.cfg.n_actions + 1))
    with pytest.raises(ValueError, match="divisible"):
        DiamondConfig(resolution=60)


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        DiamondBaseline(DiamondConfig(channels=(32, 32)), seed=0).step(torch.zeros(1, 11))
