"""Logging plumbing, in one place: the console (``console``: Lightning's info lines to stdout, its noise
silenced), the CSV logger that appends on resume (``csv_logger``), one W&B run per run directory
(``wandb_run``)."""
