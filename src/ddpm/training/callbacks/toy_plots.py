"""The ``ToyPlots`` callback: what a 2-D diffusion model has learned, drawn during and after training.

The toy model trains through the same ``DiffusionModule``, schedules, loss and samplers as the
image models; only the data (``data=spiral``, ...) and the network (``model=mlp``) differ.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ddpm.diffusion.denoiser import at_timestep
from ddpm.diffusion.samplers import DDPMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation.point_distances import nn_distance
from ddpm.training.callbacks.periodic import PeriodicDrawing, log_image


def with_noise_scale(sampler, noise_scale: float) -> DDPMSampler:
    """A copy of the DDPM sampler (a default one for other samplers) whose added noise is scaled.

    noise_scale=0 keeps the posterior mean alone: x_{t-1} = mu~_t(x0_hat, x_t) at every step.
    """
    out = copy.copy(sampler) if isinstance(sampler, DDPMSampler) else DDPMSampler()
    out.noise_scale = noise_scale
    return out


def recording(denoiser, states: list[Tensor]):
    """Wrap ``denoiser`` so that every x_t a sampler feeds it is appended to ``states``."""

    def model(x_t: Tensor, t: Tensor, cond=None):
        states.append(x_t.detach().cpu())
        return denoiser(x_t, t, cond)

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
        from ddpm.plots.figures import save_figure  # matplotlib is imported only when a picture is drawn

        step = trainer.global_step
        figures = self.figures(pl_module, trainer.datamodule.points)
        for name, fig in figures.items():
            self.last_paths[name] = path = Path(trainer.default_root_dir) / "plots" / f"{name}_step_{step:07d}.png"
            log_image(trainer, f"toy/{name}", save_figure(fig, path), step)

    @torch.no_grad()
    def figures(self, pl_module, points: Tensor) -> dict:
        """The four matplotlib figures of the model against the first ``num_samples`` of ``points`` (N, 2)."""
        from ddpm.plots.toy import points_figure, trajectories_figure, vector_field_figure

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

        # The field is the network's own eps_hat: clipping x0_hat to [-1, 1] would recompute eps_hat
        # from the clipped x0_hat and bend the arrows wherever x0_hat leaves the data square.
        unclipped = denoiser.replace(clip_denoised=False)

        def score(x: Tensor, t_int: int) -> Tensor:
            """The implied score grad log p_t(x) = -eps_hat / sqrt(1 - abar_t) at points x (N, 2)."""
            eps = at_timestep(unclipped, x.to(pl_module.device), t_int).eps  # (N, 2)
            return (-eps / schedule.sqrt_one_minus_alphas_cumprod[t_int]).cpu()

        T = schedule.num_timesteps
        times = sorted({round(f * (T - 1)) for f in self.field_times}, reverse=True)
        field = vector_field_figure(score, times, schedule, data)
        pl_module.train(was_training)

        references = {"another draw of the data": second_draw, "N(0, I)": torch.randn(n, 2, generator=generator())}
        references = {name: nn_distance(x, data) for name, x in references.items()}
        name = type(pl_module.sampler).__name__
        both = {"DDPM (noise_scale=1)": normal, "posterior mean only (noise_scale=0)": quiet}
        return {
            "samples": points_figure(data, {f"{name} samples": states[-1]}, nn_distance, references),
            "field": field,
            "trajectories": trajectories_figure(states, times, data, self.num_trajectories),
            "noise_free": points_figure(data, both, nn_distance, references),
        }
