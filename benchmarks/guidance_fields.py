"""Classifier-free guidance on ``data=gaussians8`` (the class is the mode): the field figure of
``ddpm.plots.guidance`` and the fraction of guided samples whose nearest mode is the requested one.

    # a trained run (python train.py experiment=gaussians8_cfg): its EMA net, sampler and guidance options
    python benchmarks/guidance_fields.py outputs/train/RUN/checkpoints/last.ckpt --out docs/images/guidance_fields.png
    # the exact denoiser of the mixture (ddpm.evaluation.mixture), DDPM over a cosine schedule of T steps
    python benchmarks/guidance_fields.py --exact --timesteps 200 --out outputs/plots/guidance_fields_exact.png

The table (Markdown, printed) has, per guidance scale s (s = 1 + w: 0 unconditional, 1 conditional),
the fraction of ``--per-class`` samples of every class that land nearest their requested mode,
and the worst class's fraction. Issue 11's target: >= 99% at s >= 3.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from ddpm.data.points import gaussians8
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.samplers import DDPMSampler
from ddpm.diffusion.schedules import cosine
from ddpm.errors import ConfigError, report_config_errors
from ddpm.evaluation.mixture import gaussians8_eps, nearest_mode
from ddpm.plots.figures import save_figure
from ddpm.plots.guidance import SAMPLE_SCALES, guidance_figure, guided_samples


def exact_model(timesteps: int, seed: int, clip: bool | None = None):
    """(denoiser, guidance options, sampler, data (N, 2), labels (N,), centres (8, 2)) of the exact mixture."""
    schedule = cosine(timesteps)
    net = gaussians8_eps(schedule)
    data, labels = gaussians8(2000, torch.Generator().manual_seed(seed), with_labels=True)
    return Denoiser(net, schedule, clip_denoised=clip is not False), {}, DDPMSampler(), data, labels, net.centres


def trained_model(ckpt_path: str, clip: bool | None = None):
    """The same for a trained ``data=gaussians8`` run: its EMA denoiser (``clip``: clip_denoised,
    None as trained), guidance options (interval, rescale) and sampler, its own data points and labels."""
    from hydra.utils import instantiate

    from ddpm.runs.load import load_run

    _, cfg, module = load_run(ckpt_path, denoiser={"clip_denoised": clip})
    dataset = cfg.data.get("dataset", {})
    if module.num_classes is None or not str(dataset.get("_target_", "")).endswith(".gaussians8"):
        raise ConfigError(f"'{ckpt_path}' is not a class-conditional data=gaussians8 run (experiment=gaussians8_cfg)")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    guidance = {key: cfg.guidance[key] for key in ("interval", "rescale") if key in cfg.get("guidance", {})}
    centres = gaussians8_eps(module.schedule, **{k: dataset[k] for k in ("std", "radius") if k in dataset}).centres
    n = min(2000, len(datamodule.points))
    return module.denoiser(), guidance, module.sampler, datamodule.points[:n], datamodule.labels[:n], centres


def fractions_table(denoiser, guidance: dict, sampler, centres: torch.Tensor, scales, per_class: int, seed: int):
    """{s: (fraction on the requested mode, worst class's fraction)} for ``per_class`` samples of every class."""
    labels = torch.arange(len(centres) * per_class) % len(centres)  # balanced: 0, 1, ..., 7, 0, ...
    rows = {}
    for s in scales:
        guided = ClassifierFreeGuidance(denoiser, len(centres), scale=s, **guidance)
        hit = nearest_mode(guided_samples(guided, labels, sampler, seed), centres) == labels  # (N,)
        per_class_hits = torch.stack([hit[labels == k].double().mean() for k in range(len(centres))])
        rows[s] = (hit.double().mean().item(), per_class_hits.min().item())
    return rows


def markdown(rows: dict, per_class: int) -> str:
    lines = [f"| guidance scale s | on the requested mode ({per_class} per class) | worst class |", "|---|---|---|"]
    lines += [f"| {s:g} | {100 * frac:.2f}% | {100 * worst:.2f}% |" for s, (frac, worst) in rows.items()]
    return "\n".join(lines)


@report_config_errors
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", nargs="?", help="a checkpoint of a class-conditional data=gaussians8 run")
    parser.add_argument("--exact", action="store_true", help="the exact denoiser of the mixture instead of a run")
    parser.add_argument("--clip", choices=["true", "false"],
                        help="clip x0_hat when sampling (default: as trained; the exact model: true)")
    parser.add_argument("--timesteps", type=int, default=200, help="T of the cosine schedule, with --exact")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 5.0], help="scales of the table")
    parser.add_argument("--per-class", type=int, default=1000, help="samples per class for the table (0: no table)")
    parser.add_argument("--label", type=int, default=0, help="the class whose fields are drawn")
    parser.add_argument("--scale", type=float, default=3.0, help="the scale of the guided field")
    parser.add_argument("--sample-scales", type=float, nargs="+", default=list(SAMPLE_SCALES))
    parser.add_argument("--out", type=Path, help="PNG of the figure (none if not given)")
    parser.add_argument("--dpi", type=int, default=70)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a 2-D model: more only add overhead)")
    args = parser.parse_args(argv)
    if args.exact == (args.ckpt_path is not None):
        raise ConfigError("give either a checkpoint path or --exact")
    if not 0 <= args.label < 8:
        raise ConfigError(f"--label {args.label} is not allowed: gaussians8 has classes 0..7")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    clip = None if args.clip is None else args.clip == "true"
    denoiser, guidance, sampler, data, labels, centres = (
        exact_model(args.timesteps, args.seed, clip) if args.exact else trained_model(args.ckpt_path, clip)
    )
    rows = {}
    if args.per_class > 0:
        rows = fractions_table(denoiser, guidance, sampler, centres, args.scales, args.per_class, args.seed)
        print(markdown(rows, args.per_class))
    if args.out:
        fig = guidance_figure(
            denoiser, data, labels, centres, label=args.label, scale=args.scale,
            sample_scales=tuple(args.sample_scales), sampler=sampler, seed=args.seed, **guidance,
        )
        fig.set_dpi(args.dpi)
        save_figure(fig, args.out)
        with Image.open(args.out) as image:  # a 256-colour palette: a third of the size, the same colours
            image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(args.out, optimize=True)
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
