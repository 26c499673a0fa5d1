"""The ``ToyPlots`` callback: what a 2-D diffusion model has learned, drawn during and after training.

The toy model trains through the same ``DiffusionModule``, schedules, loss and samplers as the
image models; only the data (``data=spiral``, ...) and the network (``model=mlp``) differ. On ``process=vp`` it
draws DDPM's chain at integer timesteps; on ``process=edm|flow`` the run's ODE sampler (``experiment=toy_spiral_flow``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ddpm.diffusion.denoiser import at_timestep
from ddpm.diffusion.process_sampler import sampler_name
from ddpm.diffusion.samplers import DDPMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation.paths import ode_paths, straightness
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

    On ``process=edm|flow`` (Karras et al. 2022; Lipman et al. 2023) three of them, from one deterministic run of the
    run's ODE sampler (``pl_module.sampler``, e.g. Heun) recorded at every network call (``evaluation.paths``):

    - ``samples``: its output over the data;
    - ``field``: the reverse-time probability-flow velocity -dx/dt = -(alpha' x0_hat + sigma' eps_hat), where
      sampling moves x (flow: x0_hat - eps_hat), at the solver's steps a fraction f of the way from the clean end
      (f = 1: the first step) for f in ``field_times``;
    - ``trajectories``: the points at those steps and the paths of a few, with their mean straightness
      |x_0 - x_T| / path length (1 = straight).

    Distances are :func:`nn_distance` to ``num_samples`` training points, shown with two
    references: a second draw of as many training points, and as many points of N(0, I).

    Args:
        every_n_steps: steps between pictures (0: only at the end).
        num_samples: points sampled for the scatter plots (the data must hold twice as many).
        num_trajectories: reverse paths drawn.
        field_times: fractions of T (VP; of the solver's steps on EDM / flow) at which the field and the sampled
            points are drawn.
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
        """The matplotlib figures of the model against the first ``num_samples`` of ``points`` (N, 2): four on VP,
        three on EDM / flow (``continuous_figures``)."""
        if not pl_module.is_vp:
            return self.continuous_figures(pl_module, points)
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

        references = self.references(data, second_draw, generator())
        name = type(pl_module.sampler).__name__
        both = {"DDPM (noise_scale=1)": normal, "posterior mean only (noise_scale=0)": quiet}
        return {
            "samples": points_figure(data, {f"{name} samples": states[-1]}, nn_distance, references),
            "field": field,
            "trajectories": trajectories_figure(states, times, data, self.num_trajectories),
            "noise_free": points_figure(data, both, nn_distance, references),
        }

    def generator(self, pl_module) -> torch.Generator:
        return torch.Generator(device=pl_module.device).manual_seed(self.seed)

    @staticmethod
    def references(data: Tensor, second_draw: Tensor, generator: torch.Generator) -> dict[str, float]:
        """The distances to ``data`` of another draw of it and of as many points of N(0, I)."""
        sets = {"another draw of the data": second_draw, "N(0, I)": torch.randn(len(data), 2, generator=generator)}
        return {name: nn_distance(x, data) for name, x in sets.items()}

    @torch.no_grad()
    def continuous_figures(self, pl_module, points: Tensor) -> dict:
        """EDM / flow: ``samples``, ``field`` and ``trajectories`` from one recorded run of the run's ODE sampler."""
        from ddpm.plots.toy import field_figure, path_panels_figure, points_figure

        n, process, solver = self.num_samples, pl_module.process, pl_module.sampler.ode
        data, second_draw = points[:n], points[n : 2 * n]
        was_training = pl_module.training
        pl_module.eval()
        denoiser = pl_module.denoiser(use_ema=True)
        x_T = torch.randn((n, 2), generator=self.generator(pl_module), device=pl_module.device)
        times, paths = ode_paths(solver, denoiser, process, x_T)  # times (S - 1,), paths (S, n, 2) on the CPU
        unclipped = denoiser.replace(clip_denoised=False)  # the network's own prediction, as VP's field

        def reverse_velocity(x: Tensor, t: float) -> Tensor:
            """-dx/dt = -(alpha' x0_hat + sigma' eps_hat) at points x (N, 2) and time t: where sampling moves x."""
            t_b = torch.full((len(x),), t, device=pl_module.device)  # (N,)
            return -unclipped.velocity(x.to(pl_module.device), t_b).float().cpu()

        steps = sorted({round((1 - f) * (len(times) - 1)) for f in self.field_times})  # indices into times
        nus = [float(process.noise_level(torch.tensor(times[k], dtype=torch.float64))) for k in steps]
        titles = [f"t = {times[k]:.3g}   (ν = {nu:.3g})" for k, nu in zip(steps, nus)]
        suptitle = (r"Reverse probability-flow velocity $-dx/dt = -(\alpha' \hat x_0 + \sigma' \hat\epsilon)$"
                    " (grey: the data): arrows show its direction, colour its size")
        field = field_figure(reverse_velocity, [times[k] for k in steps], titles, data, "|dx/dt|", suptitle)
        pl_module.train(was_training)

        name = sampler_name(pl_module.sampler)
        panels = [(title, k) for title, k in zip(titles, steps)] + [("output $x_0$", len(paths) - 1)]
        suptitle = (f"Reverse ODE: {n} points from $x_T \\sim N(0, I)$ through {len(times)} {name} steps "
                    f"({solver.nfe()} network calls); mean straightness |x_0 - x_T| / path length "
                    f"{straightness(paths).mean():.3f}")
        references = self.references(data, second_draw, self.generator(pl_module))
        samples = {f"{name}, {solver.nfe()} network calls": paths[-1].clamp(-1.0, 1.0)}
        return {
            "samples": points_figure(data, samples, nn_distance, references),
            "field": field,
            "trajectories": path_panels_figure(list(paths), panels, data, self.num_trajectories, suptitle),
        }
