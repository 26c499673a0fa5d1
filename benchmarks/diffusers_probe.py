"""A diffusers UNet2DModel of the bake-off, sampled with diffusers' own schedulers: why its samples look as they do.

    python benchmarks/bakeoff.py --systems diffusers --settings scaled --save-runs --out OUT
    python benchmarks/diffusers_probe.py OUT/diffusers__scaled --num-samples 300 --cells ddim:50 dpm:20 dpm:20:clip ddpm:1000

Each cell runs ``DDPMPipeline`` (the example's pipeline) with one of diffusers' schedulers built from the
training ``DDPMScheduler``'s config (eps-prediction, linear betas): ``ddpm`` (DDPMScheduler, ``clip_sample``
as trained), ``ddim`` (DDIMScheduler, clipping x0_hat to [-1, 1], timestep spacing ``leading``, its default),
``dpm`` (DPMSolverMultistepScheduler, no thresholding, its default) and ``dpm:N:clip`` (the same with
``thresholding=True, sample_max_value=1``: x0_hat clipped to [-1, 1]; ``:order3``: third order). Each is scored
by the dataset classifier (FD, confident share) and the background level, as ``benchmarks/sampler_probe.py`` scores ours.
``--x0-error`` adds the error of x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) on noised test images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ddpm.data.pixels import to_uint8  # noqa: E402
from sampler_probe import background  # noqa: E402


def scheduler_for(cell: str, config):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    name, steps, *options = cell.split(":")
    if name == "ddpm":
        return DDPMScheduler.from_config(config), int(steps)
    if name == "ddim":
        return DDIMScheduler.from_config(config), int(steps)
    if name == "dpm":
        extra = {"thresholding": True, "sample_max_value": 1.0} if "clip" in options else {}
        extra.update({"solver_order": 3} if "order3" in options else {})
        return DPMSolverMultistepScheduler.from_config(config, **extra), int(steps)
    raise SystemExit(f"cell {cell!r}: use ddpm:N, ddim:N, dpm:N or dpm:N:clip")


@torch.no_grad()
def x0_errors(unet, scheduler, test: torch.Tensor, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t_int in (0, 300, 500, 600, 700, 800, 900, 999):
        abar = float(scheduler.alphas_cumprod[t_int])
        eps = torch.randn(test.shape, generator=g)
        x_t = abar**0.5 * test + (1 - abar) ** 0.5 * eps
        eps_hat = unet(x_t, torch.full((len(test),), t_int)).sample
        x0_hat = (x_t - (1 - abar) ** 0.5 * eps_hat) / abar**0.5
        rows.append({"t": t_int, "abar": abar, "rms": (x0_hat - test).square().mean().sqrt().item(),
                     "outside": (x0_hat.abs() > 1.1).double().mean().item()})
        print(f"t={t_int:4d} abar={abar:.2e}  x0_hat - x0 RMS {rows[-1]['rms']:8.3f}  beyond +-1.1 "
              f"{rows[-1]['outside']:.3f}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="UNet2DModel.save_pretrained folder (bakeoff.py --save-runs)")
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-root", default=os.environ.get("DDPM_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--cells", nargs="*", default=["ddim:50", "dpm:20", "dpm:20:clip"])
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--x0-error", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    import bakeoff
    from ddpm.evaluation.classifier_metrics import frechet_to

    unet = UNet2DModel.from_pretrained(args.folder).eval()
    trained = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    evaluator = bakeoff.Evaluator(bakeoff.datamodule(args.data, args.data_root), fid=False, device=torch.device("cpu"))
    rows = []
    for cell in args.cells:
        scheduler, steps = scheduler_for(cell, trained.config)
        pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        images = pipeline(batch_size=args.num_samples, generator=torch.Generator().manual_seed(args.seed),
                          num_inference_steps=steps, output_type="np").images
        images = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # [0, 1] NHWC -> [-1, 1] NCHW
        seconds = time.perf_counter() - start
        features, logits = evaluator.classifier.features(to_uint8(images))
        probs = torch.as_tensor(logits).softmax(1)
        row = {"cell": cell, "fd": frechet_to(features, evaluator.classifier.reference),
               "confident": (probs.max(1).values >= 0.9).double().mean().item(), "background": background(images),
               "seconds": seconds}
        rows.append(row)
        print(f"{cell:14s} FD {row['fd']:8.2f}  confident {row['confident']:.3f}  background {row['background']:+.3f}"
              f"  ({seconds:.0f} s)", flush=True)
    errors = None
    if args.x0_error:
        test = torch.from_numpy(evaluator.test[:256]).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, C, H, W)
        errors = x0_errors(unet, trained, test, args.seed)
    (Path(args.folder) / "probe.json").write_text(json.dumps({"rows": rows, "x0_error": errors}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
