"""The MLP denoiser of the 2-D toy data (ddpm.nets.mlp)."""

import torch

from ddpm.nets.mlp import MLPDenoiser


def test_mlp_maps_points_and_timesteps_to_points():
    net = MLPDenoiser(dim=2, hidden=32, layers=2, time_embed_dim=16)
    x, t = torch.randn(7, 2), torch.randint(0, 1000, (7,))
    out = net(x, t)
    assert out.shape == (7, 2) and torch.isfinite(out).all()
    assert not torch.allclose(net(x, t), net(x, t + 100))  # depends on t
    raw = MLPDenoiser(hidden=32, coord_embed_dim=0)  # raw coordinates in
    assert raw(x, t).shape == (7, 2)
