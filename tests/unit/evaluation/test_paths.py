"""The recorded ODE paths and their straightness: flow's path to a single data point is the straight segment, VP's
is an arc of an ellipse; the exact mixture denoiser in src is E[x0 | x_t]."""

import math

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.ode_samplers import EulerSampler, HeunSampler
from ddpm.diffusion.processes import FlowProcess, VPProcess
from ddpm.errors import ConfigError
from ddpm.evaluation.mixture import GaussianMixturePosteriorMean, gaussians8_eps, gaussians8_posterior_mean
from ddpm.evaluation.paths import ode_paths, solver_states, straightness

X0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64)  # all the data: one point x0*


def point_data(process):
    """The exact denoiser when all data is x0*: a mixture of one component of std 0."""
    return GaussianMixturePosteriorMean(process, [1.0], X0, [0.0])


def test_straightness_is_chord_over_length():
    # (0, 0) -> (1, 0) -> (1, 1): chord sqrt 2, length 2; a segment walked in 2 pieces: 1; there and back: 0.
    paths = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                          [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]],
                          [[1.0, 1.0], [3.0, 3.0], [0.0, 0.0]]])  # (S=3, N=3, D=2)
    assert torch.allclose(straightness(paths), torch.tensor([math.sqrt(2) / 2, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ConfigError, match="need"):
        straightness(torch.zeros(1, 3, 2))


def test_solver_states_keep_the_last_call_at_each_time():
    # Heun's calls: t0 on x0, its corrector at t1 on x', step 1 at t1 on the accepted x1; then the output.
    calls = [(1.0, torch.zeros(1, 2)), (0.5, torch.ones(1, 2)), (0.5, 2 * torch.ones(1, 2))]
    times, paths = solver_states(calls, 3 * torch.ones(1, 2))
    assert times == [1.0, 0.5] and paths[:, 0, 0].tolist() == [0.0, 2.0, 3.0]


@pytest.mark.parametrize("solver", [EulerSampler(steps=12), HeunSampler(steps=12), EulerSampler(steps=8, spacing="uniform")])
def test_flow_paths_to_one_point_are_straight(solver):
    # With all data at x0*, x0_hat = x0* and eps_hat = (x - (1 - t) x0*) / t, so the PF-ODE is
    # dx/dt = -x0* + eps_hat = (x - x0*) / t: x(t) - x0* = (t / t_0) (x(t_0) - x0*), the segment from
    # x(t_0) = t_0 x_T to x0*, walked one way; Euler and Heun steps of this linear ODE land on it exactly.
    process = FlowProcess()
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times, paths = ode_paths(solver, point_data(process), process, x_T)
    t0 = times[0]
    expected = torch.stack([X0 + (t / t0) * (t0 * x_T - X0) for t in times] + [X0.expand_as(x_T)])
    assert torch.allclose(paths, expected, atol=1e-12)
    assert torch.allclose(straightness(paths), torch.ones(16, dtype=torch.float64), atol=1e-12)


def test_vp_paths_to_one_point_are_arcs():
    # The same data on VP: x(t) = alpha(t) x0* + sigma(t) c solves dx/dt = alpha' x0* + sigma' (x - alpha x0*) / sigma
    # with c = (x(t_0) - alpha_0 x0*) / sigma_0 constant; alpha = cos theta, sigma = sin theta (alpha^2 + sigma^2 = 1)
    # so the path is the ellipse arc theta -> cos theta x0* + sin theta c from theta_0 down to 0, of length
    # int_0^theta_0 |-sin theta x0* + cos theta c| d theta (a midpoint sum of 20,000 pieces here).
    process = VPProcess(schedules.linear(1000))
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times, paths = ode_paths(HeunSampler(steps=200), point_data(process), process, x_T)
    t0 = torch.tensor(times[0], dtype=torch.float64)
    alpha0, sigma0 = process.alpha(t0), process.sigma(t0)
    c = (sigma0 * x_T - alpha0 * X0) / sigma0  # (8, 2); the solver starts at x = sigma_0 x_T
    theta0 = torch.atan2(sigma0, alpha0)
    theta = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000 * theta0  # (M,)
    speed = (-theta.sin()[:, None, None] * X0 + theta.cos()[:, None, None] * c).norm(dim=2)  # (M, 8)
    length = speed.mean(dim=0) * theta0
    arc = (X0 - sigma0 * x_T).norm(dim=1) / length  # chord from x(t_0) = sigma_0 x_T to x0*
    measured = straightness(paths)
    assert torch.allclose(measured, arc, atol=2e-3)
    assert (measured < 0.999).all()


def test_the_mixture_posterior_mean_is_the_score_of_gaussians8_on_vp():
    # On VP at integer t (alpha = sqrt(abar)), Tweedie: E[x0 | x_t] = (x_t - sqrt(1 - abar) eps*) / sqrt(abar),
    # eps* the exact eps of evaluation.mixture (from the score of the equal-weight, equal-std mixture).
    schedule = schedules.linear(100)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0, 10, 30, 50, 80, 99])
    abar = schedule.alphas_cumprod.double()[t].unsqueeze(1)
    tweedie = (x - (1 - abar).sqrt() * gaussians8_eps(schedule)(x, t)) / abar.sqrt()
    assert torch.allclose(gaussians8_posterior_mean(VPProcess(schedule))(x, t.double()), tweedie, atol=1e-10)


def test_a_bad_mixture_is_one_line():
    with pytest.raises(ConfigError, match="weights"):
        GaussianMixturePosteriorMean(FlowProcess(), [1.0, 1.0], [[0.0, 0.0]], [0.1])
