"""Figures: schedules and the forward process, 2-D toy diffusion, sample grids. ``python -m ddpm.plots --help``."""
