"""2D toy diffusion: point datasets, a time-conditioned MLP denoiser, a distribution distance,
and the ``ToyPlots`` callback that draws what the trained model does.

The toy model trains through the same ``DiffusionModule``, schedules, loss and samplers as the
image models; only the data (``data=spiral``, ...) and the network (``model=mlp``) differ. Every
dataset lies inside [-1, 1]^2 (its noise-free shape within radius 0.9), the range the samplers
clip x0_hat to.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from ddpm.callbacks import PeriodicDrawing, log_image
from ddpm.errors import ConfigError
from ddpm.samplers import DDPMSampler
from ddpm.unet import timestep_embedding

# ---- datasets: (num_points, generator) -> (N, 2) points in [-1, 1]^2 ----------------------------


def spiral(num_points: int, generator: torch.Generator, noise: float = 0.03, turns: float = 1.25) -> Tensor:
    """Two interleaved spiral arms of ``turns`` turns each, from the origin out to radius 0.9."""
    u = torch.rand(num_points, generator=generator, dtype=torch.float64).sqrt()  # uniform along the arm's length
    theta = 2 * math.pi * turns * u + math.pi * torch.randint(0, 2, (num_points,), generator=generator)
    x = torch.stack([0.9 * u * theta.cos(), 0.9 * u * theta.sin()], dim=1)  # (N, 2)
    return (x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)).float()


def swiss_roll(num_points: int, generator: torch.Generator, noise: float = 0.02) -> Tensor:
    """The 2-D swiss roll (scikit-learn's ``make_swiss_roll`` seen from above): t from 1.5 pi to 4.5 pi."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(num_points, generator=generator, dtype=torch.float64))
    x = torch.stack([t * t.cos(), t * t.sin()], dim=1) * (0.9 / (4.5 * math.pi))  # (N, 2), radius <= 0.9
    return (x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)).float()


def moons(num_points: int, generator: torch.Generator, noise: float = 0.03) -> Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled to width 1.8."""
    angle = math.pi * torch.rand(num_points, generator=generator, dtype=torch.float64)
    lower = torch.randint(0, 2, (num_points,), generator=generator).bool()
    x = torch.stack([angle.cos(), angle.sin()], dim=1)  # (N, 2) upper moon
    x[lower] = torch.stack([1 - angle[lower].cos(), 0.5 - angle[lower].sin()], dim=1)
    x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 0.6  # x in [-1.5, 1.5] -> [-0.9, 0.9]
    return (x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)).float()


def gaussians8(num_points: int, generator: torch.Generator, std: float = 0.04, radius: float = 0.8) -> Tensor:
    """A mixture of 8 equally weighted Gaussians evenly spaced on a circle."""
    k = torch.randint(0, 8, (num_points,), generator=generator).double()
    centres = radius * torch.stack([(k * math.pi / 4).cos(), (k * math.pi / 4).sin()], dim=1)  # (N, 2)
    return (centres + std * torch.randn(centres.shape, generator=generator, dtype=torch.float64)).float()


class PointDataModule(L.LightningDataModule):
    """Shuffled batches of a fixed set of 2-D points, made from a seed when set up.

    Args:
        dataset: ``dataset(num_points, generator) -> (N, 2)`` (a Hydra ``_partial_`` of a builder above).
        num_points: size of the point set.
        seed: seed of the point set (batch order follows the global seed, as for images).
        batch_size: points per batch; batches are ``[x]`` with x of shape (B, 2).
    """

    def __init__(
        self, dataset: Callable[..., Tensor], num_points: int = 10_000, seed: int = 0, batch_size: int = 512
    ):
        super().__init__()
        if batch_size > num_points:
            raise ConfigError(f"data.batch_size={batch_size} is more than data.num_points={num_points}")
        self.build_dataset = dataset
        self.num_points, self.seed, self.batch_size = num_points, seed, batch_size
        self.points: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.points is None:
            self.points = self.build_dataset(self.num_points, torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        # Whole batches are gathered by one index tensor (batch_size=None turns off per-point collation).
        batches = BatchSampler(RandomSampler(self.points), self.batch_size, drop_last=True)
        return DataLoader(TensorDataset(self.points), sampler=batches, batch_size=None)


# ---- the denoiser ---------------------------------------------------------------------------------


class MLPDenoiser(nn.Module):
    """A residual MLP ``net(x_t (B, dim), t (B,)) -> (B, dim)`` conditioned on a sinusoidal embedding of t.

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
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 64,
        layers: int = 3,
        time_embed_dim: int = 32,
        coord_embed_dim: int = 32,
        coord_scale: float = 25.0,
    ):
        super().__init__()
        if min(dim, hidden, layers, time_embed_dim) < 1 or coord_embed_dim < 0:
            sizes = f"dim={dim}, hidden={hidden}, layers={layers}, time_embed_dim={time_embed_dim}"
            raise ConfigError(f"{sizes}, coord_embed_dim={coord_embed_dim}: need all >= 1 (coord_embed_dim >= 0)")
        self.time_embed_dim, self.coord_embed_dim, self.coord_scale = time_embed_dim, coord_embed_dim, coord_scale
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim * coord_embed_dim if coord_embed_dim else dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim))  # (B, hidden)
        if self.coord_embed_dim:
            # sin(f x), cos(f x) for frequencies f from 1 to coord_scale, per coordinate
            coords = timestep_embedding(self.coord_scale * x.flatten(), self.coord_embed_dim, self.coord_scale)
            x = coords.reshape(len(x), -1)  # (B * dim, E) -> (B, dim * E)
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)  # (B, dim)


# ---- distribution distances ----------------------------------------------------------------------


def nn_distance(x: Tensor, y: Tensor) -> float:
    """Symmetric mean nearest-neighbour (Chamfer) distance between point sets x (N, D) and y (M, D).

    1/2 (mean_i min_j |x_i - y_j| + mean_j min_i |x_i - y_j|), in the units of the points. The first
    term grows when samples leave the data (blur), the second when part of the data is left
    uncovered (collapse); for two draws of the same distribution both shrink with the sample size.
    """
    d = torch.cdist(x.double().flatten(1), y.double().flatten(1))  # (N, M)
    return 0.5 * (d.min(dim=1).values.mean() + d.min(dim=0).values.mean()).item()


def median_distance(x: Tensor) -> float:
    """The median pairwise Euclidean distance within x (N, D): the median-heuristic RBF bandwidth."""
    d = torch.cdist(x.double(), x.double())
    return d[torch.triu_indices(len(x), len(x), offset=1).unbind()].median().item()


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Maximum mean discrepancy between samples x (N, D) and y (M, D) under an RBF kernel.

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), k(a, b) = exp(-|a - b|^2 / (2 h^2)), the biased
    (V-statistic) estimate of Gretton et al. 2012, Eq. 5; returns MMD, the square root.
    ``bandwidth`` h defaults to the median pairwise distance of ``y``, the reference sample, so
    that every sample compared with the same reference is measured with the same kernel. At that
    width it sees the overall shape (collapse, pure noise), not the thickness of a spiral arm.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    h = median_distance(y) if bandwidth is None else bandwidth

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * h * h)).mean()

    return (k(x, x) + k(y, y) - 2 * k(x, y)).clamp(min=0).sqrt().item()


# ---- callbacks ------------------------------------------------------------------------------------


class CPUThreads(L.Callback):
    """Set torch's intra-op CPU threads when fitting starts.

    A 2-D MLP on batches of 1,024 points gains nothing from a second thread; on a busy 2-core
    machine two threads made ``experiment=toy_spiral`` five times slower than one.
    """

    def __init__(self, num_threads: int = 1):
        if num_threads < 1:
            raise ConfigError(f"num_threads={num_threads!r} is not allowed: use 1 or more")
        self.num_threads = num_threads

    def setup(self, trainer, pl_module, stage: str) -> None:
        torch.set_num_threads(self.num_threads)


def with_noise_scale(sampler, noise_scale: float) -> DDPMSampler:
    """A copy of the DDPM sampler (a default one for other samplers) whose added noise is scaled.

    noise_scale=0 keeps the posterior mean alone: x_{t-1} = mu~_t(x0_hat, x_t) at every step.
    """
    out = copy.copy(sampler) if isinstance(sampler, DDPMSampler) else DDPMSampler()
    out.noise_scale = noise_scale
    return out


def recording(denoiser, states: list[Tensor]):
    """Wrap ``denoiser`` so that every x_t a sampler feeds it is appended to ``states``."""

    def model(x_t: Tensor, t: Tensor):
        states.append(x_t.detach().cpu())
        return denoiser(x_t, t)

    return model


class ToyPlots(PeriodicDrawing):
    """Every ``every_n_steps`` optimizer steps and at the end of training, draw the 2-D model (EMA
    weights) into ``<run dir>/plots/<name>_step_XXXXXXX.png`` and send each to the logger as ``toy/<name>``:

    - ``samples``: samples of the configured sampler over the data, with their distance to it;
    - ``field``: the learned score -eps_hat / sqrt(1 - abar_t) as arrows on a grid at several t;
    - ``trajectories``: the sampled points at those t, and the reverse paths x_T -> x_0 of a few;
    - ``noise_free``: DDPM sampling beside the same sampler with its added noise switched off:
      every sample follows the posterior mean, which at large t is the data average, and all of
      them end in one point.

    Distances are :func:`nn_distance` to ``num_samples`` training points, shown with two
    references: a second draw of as many training points, and as many points of N(0, I).

    Args:
        every_n_steps: steps between pictures (0: only at the end).
        num_samples: points sampled for the scatter plots (the data must hold twice as many).
        num_trajectories: reverse paths drawn.
        field_times: fractions of T at which the field and the sampled points are drawn.
        seed: seed of x_T and all sampling noise, the same every time.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        num_samples: int = 2000,
        num_trajectories: int = 6,
        field_times: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.02),
        seed: int = 0,
    ):
        super().__init__(every_n_steps)
        if num_samples < 1 or not 1 <= num_trajectories <= num_samples:
            raise ConfigError(
                f"num_samples={num_samples!r}, num_trajectories={num_trajectories!r}:"
                " need 1 <= num_trajectories <= num_samples"
            )
        if not all(0.0 <= f <= 1.0 for f in field_times):
            raise ConfigError(f"field_times={list(field_times)!r} is not allowed: fractions of T lie in [0, 1]")
        self.num_samples, self.num_trajectories = num_samples, num_trajectories
        self.field_times, self.seed = tuple(field_times), seed
        self.last_paths: dict[str, Path] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        points = getattr(trainer.datamodule, "points", None)
        if points is None or len(points) < 2 * self.num_samples:
            have = "no point set" if points is None else f"{len(points)} points"
            need = f"a PointDataModule of at least 2 x num_samples={self.num_samples} points"
            raise ConfigError(f"ToyPlots needs {need}, got {have}")

    def draw(self, trainer: L.Trainer, pl_module) -> None:
        from ddpm import plots  # matplotlib is imported only when a picture is drawn

        step = trainer.global_step
        figures = self.figures(pl_module, trainer.datamodule.points, plots)
        for name, fig in figures.items():
            self.last_paths[name] = path = Path(trainer.default_root_dir) / "plots" / f"{name}_step_{step:07d}.png"
            log_image(trainer, f"toy/{name}", plots.save_figure(fig, path), step)

    @torch.no_grad()
    def figures(self, pl_module, points: Tensor, plots) -> dict:
        """The four figures of the model against the first ``num_samples`` of ``points`` (N, 2)."""
        n, schedule = self.num_samples, pl_module.schedule
        data, second_draw = points[:n], points[n : 2 * n]

        def generator() -> torch.Generator:
            return torch.Generator(device=pl_module.device).manual_seed(self.seed)

        normal, quiet = (
            pl_module.sample(n, generator(), sampler=with_noise_scale(pl_module.sampler, s)).cpu() for s in (1.0, 0.0)
        )
        was_training = pl_module.training
        pl_module.eval()
        denoiser = pl_module.denoiser(use_ema=True)
        states: list[Tensor] = []  # x_t for t = T-1, ..., 0, each (n, 2)
        x_T = torch.randn((n, 2), generator=generator(), device=pl_module.device)
        x_0 = pl_module.sampler(recording(denoiser, states), schedule, x_T, generator())
        states.append(x_0.cpu())

        def score(x: Tensor, t_int: int) -> Tensor:
            """The implied score grad log p_t(x) = -eps_hat / sqrt(1 - abar_t) at points x (N, 2)."""
            x = x.to(pl_module.device)
            t = torch.full((len(x),), t_int, device=x.device, dtype=torch.long)
            return (-denoiser(x, t)[1] / schedule.sqrt_one_minus_alphas_cumprod[t_int]).cpu()

        T = schedule.num_timesteps
        times = sorted({round(f * (T - 1)) for f in self.field_times}, reverse=True)
        field = plots.vector_field_figure(score, times, schedule, data)
        pl_module.train(was_training)

        references = {"another draw of the data": second_draw, "N(0, I)": torch.randn(n, 2, generator=generator())}
        references = {name: nn_distance(x, data) for name, x in references.items()}
        name = type(pl_module.sampler).__name__
        both = {"DDPM (noise_scale=1)": normal, "posterior mean only (noise_scale=0)": quiet}
        return {
            "samples": plots.points_figure(data, {f"{name} samples": states[-1]}, nn_distance, references),
            "field": field,
            "trajectories": plots.trajectories_figure(states, times, data, self.num_trajectories),
            "noise_free": plots.points_figure(data, both, nn_distance, references),
        }
