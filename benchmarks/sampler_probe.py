"""One checkpoint, many ways to sample it: which part (weights, sampler, steps, clipping) makes bad samples.

    python benchmarks/sampler_probe.py RUN/checkpoints/last.ckpt --num-samples 500 \
        --cells ddim:50 ddim:50:eta=1 dpm_solver:20 ddpm:100 ddpm:1000 --raw --no-clip

Every cell draws the same x_T (the same seed) and is scored by the dataset classifier of
``ddpm.evaluation.classifier`` (FD against the training split, the share of samples it assigns to one class
with probability >= 0.9) and by the background level (the mean of the darker half of each sample's
pixels, in [-1, 1]: -1 for the data's black, higher for grey backgrounds). ``--raw`` adds every cell
with the raw weights beside the EMA's; ``--no-clip`` every cell without clipping x0_hat. Writes
``probe.json`` and one grid per cell into ``--out`` (default ``<run>/probe``).

A cell is ``sampler:steps[:key=value...]``, e.g. ``ddim:50:spacing=trailing``, ``ddpm:1000``.

``--x0-error`` adds the denoiser's error on real images: for test images x0 noised to x_t at ten timesteps,
the RMS of x0_hat - x0 before clipping, and the share of x0_hat's pixels beyond +-1.1 (what clipping
cuts): where a prediction type's x0_hat goes wrong, and whether only at high noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.data.pixels import to_uint8  # noqa: E402
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler  # noqa: E402

SAMPLERS = {"ddim": DDIMSampler, "dpm_solver": DPMSolverSampler, "ddpm": DDPMSampler}


def parse_cell(spec: str):
    name, steps, *options = spec.split(":")
    kwargs = {"steps": int(steps)}
    for option in options:
        key, value = option.split("=", 1)
        kwargs[key] = float(value) if key in ("eta", "noise_scale") else value
    if name == "ddpm" and kwargs["steps"] >= 1000:
        kwargs["steps"] = None  # all T steps
    return SAMPLERS[name](**kwargs)


def background(images: torch.Tensor) -> float:
    """The mean over samples of the mean of the darker half of each sample's pixels, in [-1, 1]."""
    flat = images.flatten(1).sort(dim=1).values  # (N, D)
    return flat[:, : flat.shape[1] // 2].mean().item()


@torch.no_grad()
def x0_errors(module, cfg, seed: int, count: int = 256) -> list[dict]:
    """RMS of x0_hat - x0 (unclipped) and the share of x0_hat beyond +-1.1, for ``count`` test images noised
    to x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at ten timesteps (the EMA weights)."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    test = dm.build_dataset(**dm.dataset_kwargs, train=False)
    x0 = torch.stack([test[i][0] for i in range(count)])  # (N, C, H, W) in [-1, 1]
    denoiser = module.denoiser(use_ema=True).replace(clip_denoised=False)
    g = torch.Generator().manual_seed(seed)
    rows = []
    T = module.schedule.num_timesteps
    for t_int in [0, T // 10, 2 * T // 10, 3 * T // 10, 4 * T // 10, 5 * T // 10, 6 * T // 10, 7 * T // 10,
                  8 * T // 10, T - 1]:
        t = torch.full((count,), t_int, dtype=torch.long)
        abar = module.schedule.abar(t_int)
        x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * torch.randn(x0.shape, generator=g)
        x0_hat = denoiser(x_t, t).x0
        rows.append({"t": t_int, "abar": abar, "rms": (x0_hat - x0).square().mean().sqrt().item(),
                     "outside": (x0_hat.abs() > 1.1).double().mean().item()})
        print(f"t={t_int:4d} abar={abar:.2e}  x0_hat - x0 RMS {rows[-1]['rms']:8.3f}  beyond +-1.1 "
              f"{rows[-1]['outside']:.3f}", flush=True)  # beyond +-1.1: what clipping cuts, not float noise at -1
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--cells", nargs="*", default=["ddim:50", "ddim:50:eta=1", "dpm_solver:20", "ddpm:100"])
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--raw", action="store_true", help="each cell also with the raw weights")
    p.add_argument("--no-clip", action="store_true", help="each cell also without clipping x0_hat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--x0-error", action="store_true", help="the EMA denoiser's x0 error on noised test images by t")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hydra.utils import instantiate

    from ddpm.evaluation.classifier import load_or_train
    from ddpm.evaluation.classifier_metrics import frechet_to
    from torchvision.utils import save_image

    from ddpm.plots.grid import image_grid
    from ddpm.runs.load import load_run

    run_dir, cfg, module = load_run(args.ckpt)
    classifier = load_or_train(instantiate(cfg.data))
    out = Path(args.out or run_dir / "probe")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.cells:
        for use_ema in [True, False] if args.raw else [True]:
            for clip in [True, False] if args.no_clip else [module.denoiser().clip_denoised]:
                sampler = parse_cell(spec)
                denoiser = module.denoiser(use_ema).replace(clip_denoised=clip)
                start = time.perf_counter()
                images = []
                for k, lo in enumerate(range(0, args.num_samples, args.batch)):
                    n = min(args.batch, args.num_samples - lo)
                    g = torch.Generator().manual_seed(args.seed + k)
                    x_T = torch.randn((n, *module.sample_shape), generator=g)
                    images.append(sampler(denoiser, module.schedule, x_T, g).clamp(-1, 1))
                images = torch.cat(images)
                seconds = time.perf_counter() - start
                features, logits = classifier.features(to_uint8(images))
                probs = torch.as_tensor(logits).softmax(1)
                row = {"cell": spec, "weights": "ema" if use_ema else "raw", "clip": clip,
                       "fd": frechet_to(features, classifier.reference),
                       "confident": (probs.max(1).values >= 0.9).double().mean().item(),
                       "background": background(images), "seconds": seconds}
                rows.append(row)
                name = f"{spec.replace(':', '_').replace('=', '')}_{row['weights']}_{'clip' if clip else 'noclip'}"
                save_image(image_grid(images[:64], nrow=8), out / f"{name}.png")
                print(f"{spec:28s} {row['weights']:4s} clip={clip!s:5s} FD {row['fd']:8.2f}  confident "
                      f"{row['confident']:.3f}  background {row['background']:+.3f}  ({seconds:.0f} s)", flush=True)
    errors = x0_errors(module, cfg, args.seed) if args.x0_error else None
    (out / "probe.json").write_text(json.dumps({"ckpt": args.ckpt, "num_samples": args.num_samples, "rows": rows,
                                               "x0_error": errors}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
