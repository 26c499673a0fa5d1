"""``python -m ddpm.plots schedules|forward|forward1d``: see ``ddpm.plots.schedules``."""

from ddpm.plots.schedules import main

main()
