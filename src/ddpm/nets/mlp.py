"""A residual MLP denoiser for low-dimensional points (the 2-D toy diffusion)."""

from __future__ import annotations

from torch import Tensor, nn

from ddpm.errors import ConfigError, check_choice
from ddpm.nets.embeddings import ClassEmbedding, timestep_embedding


class MLPDenoiser(nn.Module):
    """A residual MLP ``net(x_t (B, dim), t (B,), cond=None) -> (B, dim)`` conditioned on a sinusoidal embedding of t
    ((B, 2 dim) with ``learn_sigma``).

    Each coordinate of x_t enters as sin(f x), cos(f x) for frequencies f from 1 to
    ``coord_scale`` (Fourier features, Tancik et al. 2020): on raw 2-D coordinates an MLP learns
    the thin arms of a spiral much more slowly.

    Args:
        dim: dimension of the points.
        hidden: width of every hidden layer.
        layers: number of residual blocks; each adds the time embedding to its input.
        time_embed_dim: size of the sinusoidal embedding of t.
        coord_embed_dim: size of the sinusoidal embedding of each coordinate (0: raw coordinates).
        coord_scale: the highest frequency of the coordinate features.
        num_classes: None: unconditional (the parameters of the plain MLP). K: ``class_embed``, a
            learned (K + 1, hidden) table (row K: the null class) whose row for the label is added
            to the time embedding.
        learn_sigma: also output, in a second ``dim`` columns, the v of a learned reverse variance
            (Nichol & Dhariwal 2021; ``Denoiser(variance="learned_range")``). False: the plain MLP,
            its parameters and initial weights unchanged.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 64,
        layers: int = 3,
        time_embed_dim: int = 32,
        coord_embed_dim: int = 32,
        coord_scale: float = 25.0,
        num_classes: int | None = None,
        learn_sigma: bool = False,
    ):
        super().__init__()
        if min(dim, hidden, layers, time_embed_dim) < 1 or coord_embed_dim < 0:
            sizes = f"dim={dim}, hidden={hidden}, layers={layers}, time_embed_dim={time_embed_dim}"
            raise ConfigError(f"{sizes}, coord_embed_dim={coord_embed_dim}: need all >= 1 (coord_embed_dim >= 0)")
        self.time_embed_dim, self.coord_embed_dim, self.coord_scale = time_embed_dim, coord_embed_dim, coord_scale
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim * coord_embed_dim if coord_embed_dim else dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(layers))
        self.learn_sigma = check_choice("model.learn_sigma", learn_sigma, (True, False))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * dim if learn_sigma else dim))
        self.num_classes = ClassEmbedding.check(num_classes)  # built last: unconditional init unchanged
        if num_classes is not None:
            self.class_embed = ClassEmbedding(num_classes, hidden)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """x (B, dim), t (B,), cond: labels (B,) in [0, num_classes] of a conditional net (None: null class)."""
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim))  # (B, hidden)
        if self.num_classes is not None:
            emb = emb + self.class_embed(cond, len(x), x.device)  # (B, hidden)
        elif cond is not None:
            raise ConfigError(ClassEmbedding.UNCONDITIONAL)
        if self.coord_embed_dim:
            # sin(f x), cos(f x) for frequencies f from 1 to coord_scale, per coordinate
            coords = timestep_embedding(self.coord_scale * x.flatten(), self.coord_embed_dim, self.coord_scale)
            x = coords.reshape(len(x), -1)  # (B * dim, E) -> (B, dim * E)
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)  # (B, dim), or (B, 2 dim) with learn_sigma
