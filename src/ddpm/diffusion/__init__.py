"""The diffusion math in plain PyTorch: schedules, parameterizations, the Denoiser, losses, samplers, likelihood.

No Lightning and no network code: every object here works with any ``net(x_t, t)``.
"""
