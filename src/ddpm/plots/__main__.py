"""Pictures of diffusion, drawn from the same schedule code that trains the models.

    python -m ddpm.plots schedules [--schedules linear cosine ...] [--out DIR]
    python -m ddpm.plots forward [--image digits|mnist|china|flower|PATH] [--root DIR] [--size 64] [--out DIR]
    python -m ddpm.plots forward1d [--beta 0.01] [--out DIR]
    python -m ddpm.plots paths [--paths 48] [--steps 40] [--schedule linear] [--out DIR]

The schedules are those of ``conf/schedule/*.yaml`` and two bad ones (``ddpm.plots.schedules``);
the figures are in ``ddpm.plots.schedules`` and ``ddpm.plots.forward``, the PNGs are written by
``ddpm.plots.figures.save_figure``. ``paths`` draws VP's and flow matching's paths from noise to
``data=gaussians8`` (``ddpm.plots.paths``); ``--out docs/images`` writes the docs' ``paths_vp_vs_flow.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.diffusion.processes import FlowProcess, VPProcess
from ddpm.errors import ConfigError, report_config_errors
from ddpm.plots.figures import save_figure
from ddpm.plots.forward import FORWARD_FRACTIONS, forward1d_figure, forward_figure
from ddpm.plots.images import load_image
from ddpm.plots.paths import all_paths, paths_figure
from ddpm.plots.schedules import DEFAULT_SCHEDULES, get_schedule, schedule_names, schedules_figure


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm.plots", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    known = schedule_names()
    names = {"nargs": "+", "default": DEFAULT_SCHEDULES, "choices": known, "metavar": "NAME"}
    p = sub.add_parser("schedules", help="beta, alpha-bar, signal/noise scales and log SNR of several schedules")
    p.add_argument("--schedules", **names, help=f"from {known} (default: %(default)s)")
    p = sub.add_parser("forward", help="x_t of one image at a row of timesteps, one row per schedule")
    p.add_argument("--schedules", **names, help=f"from {known} (default: %(default)s)")
    p.add_argument("--image", help="digits | mnist | china | flower | PATH (default: mnist with --root, else digits)")
    p.add_argument("--root", default=None, help="data root holding MNIST/raw, for --image mnist")
    p.add_argument("--size", type=int, default=64, help="side of the square image in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("forward1d", help="histograms of a 1-D bimodal distribution drifting to N(0, 1)")
    p.add_argument("--beta", type=float, default=0.01, help="the fixed beta compared with the linear schedule")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("paths", help="VP's and flow matching's paths noise -> data (gaussians8), with their straightness")
    p.add_argument("--paths", type=int, default=48, help="paths drawn per panel (default 48)")
    p.add_argument("--steps", type=int, default=40, help="Heun steps of the ODE (default 40)")
    p.add_argument("--schedule", default="linear", choices=known, metavar="NAME", help=f"VP's schedule, from {known}")
    p.add_argument("--seed", type=int, default=0)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=Path("outputs/plots"), help="folder for the PNGs")
        p.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNGs (default 100)")
    return parser


@report_config_errors
def main(argv: list[str] | None = None) -> list[Path]:
    """Draw the figures of one command and write them as ``<out>/<name>.png``; returns their paths."""
    args = _parser().parse_args(argv)
    if args.command == "schedules":
        figures = {"schedules": schedules_figure(args.schedules)}
    elif args.command == "forward":
        image = args.image or ("mnist" if args.root else "digits")
        name = Path(image).stem if Path(image).is_file() else image
        x0 = load_image(image, args.size, args.root)  # (C, size, size)
        figures = {f"forward_{name}": forward_figure(x0, args.schedules, FORWARD_FRACTIONS, args.seed)}
    elif args.command == "paths":
        processes = {f"VP ({args.schedule})": VPProcess(get_schedule(args.schedule)), "flow matching": FlowProcess()}
        data, paths = all_paths(processes, args.paths, args.steps, args.seed)
        figures = {"paths_vp_vs_flow": paths_figure(data, paths, args.steps)}
    else:
        if not 0 < args.beta < 1:
            raise ConfigError(f"--beta {args.beta} is not allowed: it must lie in (0, 1)")
        figures = {"forward1d": forward1d_figure(args.beta, seed=args.seed)}
    paths = []
    for name, fig in figures.items():
        fig.set_dpi(args.dpi)
        paths.append(args.out / f"{name}.png")
        save_figure(fig, paths[-1])
        print(f"wrote {paths[-1]}")
    return paths


if __name__ == "__main__":
    main()
