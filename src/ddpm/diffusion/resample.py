"""Importance sampling of the timestep for the variational bound (Nichol & Dhariwal 2021, Sec. 3.3).

L_vlb = sum_t L_t = E_{t ~ p}[L_t / p_t] for any p with p_t > 0; the uniform p_t = 1/T gives T L_t.
The L_t differ by orders of magnitude (the first few t dominate), so the uniform estimate is noisy;
their Eq. 18 takes p_t proportional to sqrt(E[L_t^2]), estimated from the last ``history`` (10) values
of L_t seen at each t, and samples uniformly until every t has that many. As in improved-diffusion's
``LossSecondMomentResampler``, a small ``uniform_prob`` of the uniform distribution is mixed in, so
no p_t is 0.

Everything stays on the device (no host sync per step). Each process keeps its own history (with
several ranks each one's p differs; every estimate stays unbiased), and the history is not
checkpointed: after a resume it is refilled in about T * history / batch steps, sampling uniformly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm.errors import ConfigError


def check_history(history) -> int:
    """``history`` if it is a positive integer, else a ConfigError of one line."""
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ConfigError(f"history={history!r} is not allowed: use a positive integer (10 in Improved DDPM)")
    return history


class LossSecondMomentSampler:
    """t ~ p_t proportional to sqrt(mean of the last ``history`` L_t^2), mixed with uniform (module docstring).

    Args:
        num_timesteps: T.
        history: values of L_t kept per t (10 in the paper).
        uniform_prob: weight of the uniform distribution in the mixture (0.001, improved-diffusion's).
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        check_history(history)
        if isinstance(uniform_prob, bool) or not isinstance(uniform_prob, (int, float)) or not 0 < uniform_prob <= 1:
            raise ConfigError(f"uniform_prob={uniform_prob!r} is not allowed: use a number in (0, 1] such as 0.001")
        self.num_timesteps, self.history, self.uniform_prob = num_timesteps, history, float(uniform_prob)
        self.values: Tensor | None = None  # (T, history) the last L_t at each t, a ring per row
        self.seen: Tensor | None = None  # (T,) how many L_t each t has had

    def _on(self, device: torch.device) -> None:
        if self.values is None or self.values.device != torch.device(device):
            values = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64, device=device)
            seen = torch.zeros(self.num_timesteps, dtype=torch.long, device=device)
            if self.values is not None:
                values, seen = self.values.to(device), self.seen.to(device)
            self.values, self.seen = values, seen

    def probabilities(self, device: torch.device | str = "cpu") -> Tensor:
        """p (T,) float64: uniform until every t has ``history`` values, then Eq. 18 mixed with uniform."""
        self._on(device)
        T = self.num_timesteps
        rms = self.values.pow(2).mean(dim=1).sqrt()  # (T,) sqrt(E[L_t^2])
        p = rms / rms.sum() * (1 - self.uniform_prob) + self.uniform_prob / T
        warm = (self.seen >= self.history).all() & (rms.sum() > 0)
        return torch.where(warm, p, torch.full_like(p, 1.0 / T))

    def sample(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """t (B,) ~ p and the weights 1 / (T p_t) (B,) float32 that make T L_t weight an unbiased estimate of L_vlb."""
        p = self.probabilities(device)
        t = torch.multinomial(p, batch, replacement=True, generator=generator)  # (B,)
        return t, (1.0 / (self.num_timesteps * p[t])).float()

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Push L_t values ``losses`` (B,) seen at timesteps t (B,); each t keeps its last ``history``."""
        self._on(t.device)
        t = t.long()
        order = torch.argsort(t, stable=True)  # group equal t, keeping their order in the batch
        t_sorted, values = t[order], losses.detach().to(self.values)[order]
        counts = torch.bincount(t_sorted, minlength=self.num_timesteps)  # (T,) this batch's values per t
        rank = torch.arange(len(t), device=t.device) - (counts.cumsum(0) - counts)[t_sorted]  # (B,) i-th of its t
        keep = rank >= counts[t_sorted] - self.history  # a t seen more than ``history`` times keeps its last ones
        slot = (self.seen[t_sorted] + rank) % self.history
        self.values[t_sorted[keep], slot[keep]] = values[keep]
        self.seen += counts
