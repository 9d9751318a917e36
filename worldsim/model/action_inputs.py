"""What the dynamics reads from an action besides its embedding: the network's action vector and
the turn prior.

A mouse/keyboard turn mostly slides the image sideways, so each frame token also receives the
previous frame's latent turned by the yaw the action commands (:func:`turn_prior`): slid in latent
space (:func:`shift_latent`), or with ``prior_space = "pixel"`` the previous picture re-aimed as a
pinhole camera turns (:class:`~worldsim.model.view_warp.LatentReaim`, passed in by the owner of
the frame codec). The yaw is a linear function of :func:`turn_features` with the weights the
dynamics config learned from the recordings' poses (``turn_weights``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from worldsim.model.dynamics import DynamicsConfig


def action_vector(buttons: torch.Tensor, axes: torch.Tensor, cfg: DynamicsConfig, present: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """(…, NB) buttons + (…, NA) axes → (…, action_dim) network input."""
    scale = torch.tensor(cfg.axis_scale[: cfg.n_axes], dtype=torch.float32, device=axes.device)
    flag = torch.ones(buttons.shape[:-1] + (1,), device=buttons.device) if present is None else present[..., None].float()
    return torch.cat([buttons.float(), axes.float() / scale, flag], dim=-1)


def turn_features(buttons: torch.Tensor, axes: torch.Tensor, button_names: list[str], axis_names: list[str]) -> torch.Tensor:
    """Features whose linear combination predicts rightward yaw (deg/tick):
    [right - left keys, (right - left)·run, mouse_dx]. Missing controls count as 0."""
    def b(name):
        return buttons[..., button_names.index(name)].float() if name in button_names else torch.zeros(buttons.shape[:-1])
    turn = b("turn_right") - b("turn_left")
    dx = axes[..., axis_names.index("mouse_dx")].float() if "mouse_dx" in axis_names else torch.zeros_like(turn)
    return torch.stack([turn, turn * b("run"), dx], dim=-1)


def shift_latent(z: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Slide latents (B, C, h, w) left by ``cells`` (B,) latent cells (a right turn moves the
    scene left), bilinear, edges repeated."""
    B, _, h, w = z.shape
    ys = torch.linspace(-1, 1, h, device=z.device)
    xs = torch.linspace(-1, 1, w, device=z.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    gx = gx[None] + (2.0 * cells.float() / (w - 1))[:, None, None]
    grid = torch.stack([gx, gy[None].expand(B, h, w)], dim=-1)  # (B, h, w, 2)
    return F.grid_sample(z.float(), grid, mode="bilinear", padding_mode="border", align_corners=True).to(z.dtype)


def turn_prior(prev: torch.Tensor, feats: torch.Tensor, cfg: DynamicsConfig,
               reaim: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               space: str | None = None) -> torch.Tensor:
    """Previous latent (B, C, h, w) turned by the yaw the action commands: slid in latent space,
    or with ``cfg.prior_space == "pixel"`` re-aimed by ``reaim(prev, yaw)`` (a LatentReaim);
    unchanged without turn weights. ``space`` overrides ``cfg.prior_space`` ("latent": the light
    prior a loaded runtime falls back on)."""
    if not cfg.turn_weights:
        return prev
    w = torch.tensor(cfg.turn_weights, dtype=torch.float32, device=prev.device)
    yaw = feats.float() @ w  # (B,) degrees to the right
    if (space or cfg.prior_space) == "pixel":
        if reaim is None:
            raise ValueError("dynamics.prior_space 'pixel' needs the frame codec to re-aim pictures (reaim=)")
        return reaim(prev, yaw).to(prev.dtype)
    cells = yaw * cfg.px_per_degree * cfg.latent_size / cfg.frame_size
    return shift_latent(prev, cells)
