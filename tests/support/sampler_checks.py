"""What the continuous-time sampler tests share: k-diffusion's own grids in float64, and the statistic that says
whether samples reproduce a Gaussian mixture."""

import math

import torch


def k_diffusion_sigmas(spacing: str, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_karras`` (``karras``) or ``get_sigmas_exponential`` (``log_snr``), built in float64
    (its linspace follows the default dtype)."""
    from k_diffusion.sampling import get_sigmas_exponential, get_sigmas_karras

    build = get_sigmas_karras if spacing == "karras" else get_sigmas_exponential
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build(steps, sigma_min, sigma_max)
    finally:
        torch.set_default_dtype(default)


def mixture_z(x: torch.Tensor, weights, means, stds) -> torch.Tensor:
    """Samples x (n, D) of the mixture sum_k w_k N(m_k, s_k^2 I), each on its nearest mode: per mode the weight, and
    per coordinate the mean and std of the samples within 5 stds of it, in standard errors of the mixture's
    (w(1-w)/n, s^2/n_k, s^2/(2 n_k)). Asserts first that the samples off every mode (between modes, where finite
    steps leave a few) are under 0.5%."""
    n = len(x)
    means, stds = torch.as_tensor(means, dtype=torch.float64), torch.as_tensor(stds, dtype=torch.float64)
    distance = torch.cdist(x, means)
    mode = distance.argmin(1)
    on_mode = distance.min(1).values < 5 * stds[mode]
    assert (~on_mode).double().mean() < 0.005
    z = []
    for k, (w, s) in enumerate(zip(weights, stds.tolist())):
        points = x[(mode == k) & on_mode]
        n_k = len(points)
        z.append(torch.tensor([(n_k / n - w) / math.sqrt(w * (1 - w) / n)], dtype=torch.float64))
        z.append((points.mean(0) - means[k]) / (s / math.sqrt(n_k)))
        z.append((points.std(0) - s) / (s / math.sqrt(2 * n_k)))
    return torch.cat(z)
