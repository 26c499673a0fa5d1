"""Training and sampling throughput of our DDPM U-Net against diffusers and denoising-diffusion-pytorch.

    python benchmarks/throughput.py                      # GPU: CIFAR-10 U-Net (35.7M), batch 128, bf16
    python benchmarks/throughput.py --trainer            # ... plus the real `python train.py` loop
    python benchmarks/throughput.py --compile-modes default max-autotune --json out.json
    python benchmarks/throughput.py --quick              # CPU smoke test of this script: seconds
    python benchmarks/throughput.py --systems ours ours_dit --dit dit_b2  # the U-Net beside DiT-B/2

Every system gets random images already on the device, the same batch, bf16 autocast (fp32 on the
CPU) and is timed eager and compiled (``torch.compile``). One training step is:
  ours:  the DiffusionModule's own compute_loss (epsilon-MSE), backward, grad-norm clip 1.0, fused
         Adam from configure_optimizers, EMA update -- train.py's step minus logging, channels-last
         (benchmarks/ours.py);
  peers: forward, epsilon-MSE loss, backward, fused Adam (no clip, no EMA: less work than ours;
         benchmarks/peers.py).
Sampling is each system's own DDIM loop (ours: ddpm.diffusion.samplers.DDIMSampler; diffusers:
DDIMScheduler; denoising-diffusion-pytorch: GaussianDiffusion.ddim_sample), reported in network
evaluations per second (images x steps / seconds). MFU = model FLOPs per second (3x the forward for
training, counted by torch's FlopCounterMode) over the matmul peak measured here in the same precision.

Before timing, each fast configuration is checked against the same weights in fp32 eager (an
uncompiled NCHW twin of the network, loaded with its state dict: benchmarks/system.py) on one
random batch (relative L2 error of the output, column `err`); a check above --max-err fails the run.
Times are medians over --repeats windows of --steps steps each, after --warmup steps (compilation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' samplers draw progress bars; tqdm reads this on import

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.training.perf import forward_flops, matmul_peak_flops  # noqa: E402
from ours import build_ours  # noqa: E402
from peers import IMPORT_NAMES, build_diffusers, build_lucidrains  # noqa: E402
from system import System  # noqa: E402

# The DDPM CIFAR-10 network (Ho et al. 2020): conf/model/unet_cifar10.yaml
FULL = dict(image_size=32, channels=3, base=128, mult=(1, 2, 2, 2), blocks=2, attn=(16,), batch=128)
QUICK = dict(image_size=16, channels=3, base=32, mult=(1, 2), blocks=1, attn=(8,), batch=4)



def build_ours_dit(arch: dict, device, channels_last: bool, compile_mode: str | None, autocast) -> System:
    """Our DiffusionModule around the DiT of conf/model/<arch["dit"]>.yaml (Peebles & Xie 2023) at arch's size."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{arch['dit']}.yaml")
    cfg.image_size, cfg.in_channels = arch["image_size"], arch["channels"]
    return build_ours(arch, device, channels_last, compile_mode, autocast, net=instantiate(cfg), name="ours_dit")


SYSTEMS = {"ours": build_ours, "ours_dit": build_ours_dit, "diffusers": build_diffusers, "lucidrains": build_lucidrains}


# ---- measuring ----------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, steps: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` windows of ``steps`` back-to-back calls."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def relative_error(system: System, reference: nn.Module, arch: dict, device, autocast) -> float:
    """||fast(x) - fp32 eager(x)|| / ||fp32 eager(x)|| on one random batch (eval mode, no dropout)."""
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(arch["batch"], arch["channels"], arch["image_size"], arch["image_size"], generator=g, device=device)
    t = torch.randint(0, 1000, (arch["batch"],), generator=g, device=device)
    system.net.eval()
    reference.eval()
    with torch.no_grad():
        want = system.forward(reference, x, t).double()
        with autocast():
            xf = x.contiguous(memory_format=torch.channels_last) if system.channels_last else x
            fast = system.net if system.fast is None else system.fast  # `or` would call len() on a compile wrapper
            got = system.forward(fast, xf, t).double()
    system.net.train()
    return ((got - want).norm() / want.norm()).item()


def measure(name: str, mode: str, args, arch: dict, device, peak: float) -> dict:
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    compile_mode = None if mode == "eager" else mode
    torch.manual_seed(0)
    system = SYSTEMS[name](arch, device, channels_last=(name.startswith("ours") and not args.no_channels_last),
                          compile_mode=compile_mode, autocast=autocast)
    params = sum(p.numel() for p in system.net.parameters())
    flops = forward_flops_of(system, system.reference(), arch, device)
    g = torch.Generator(device).manual_seed(0)
    shape = (arch["batch"], arch["channels"], arch["image_size"], arch["image_size"])
    batches = [torch.rand(shape, generator=g, device=device) * 2 - 1 for _ in range(4)]  # rotate 4 batches
    i = iter(range(10**9))

    def one_step():
        system.train_step(batches[next(i) % len(batches)])

    for _ in range(args.warmup):
        one_step()
    if device.type == "cuda":  # steady-state memory: compilation and autotuning workspaces excluded
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(one_step, device, args.steps, args.repeats)
    peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    err = relative_error(system, system.reference(), arch, device, autocast)  # the trained weights

    x_T = torch.randn(shape, generator=g, device=device)
    system.sample(x_T, args.sample_steps)  # warm-up: compilation for inference
    sample_s = timed(lambda: system.sample(x_T, args.sample_steps), device, 1, args.repeats)
    train_ips = arch["batch"] / train_s
    nfe_ps = arch["batch"] * args.sample_steps / sample_s
    del system, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(system=name, mode=mode, params=params, gflop_fwd=flops / 1e9, err=err, train_img_s=train_ips,
                train_mfu=train_ips * 3 * flops / peak, peak_mem_gib=peak_mem / 2**30 if peak_mem else None,
                mem_mib_per_img=peak_mem / 2**20 / arch["batch"] if peak_mem else None, sample_nfe_s=nfe_ps,
                sample_mfu=nfe_ps * flops / peak)


def forward_flops_of(system: System, reference: nn.Module, arch: dict, device) -> int:
    """FLOPs of one image's forward, counted on the eager fp32 copy.

    Attention through the math kernel: FlopCounterMode has no formula for the CPU flash kernel of
    scaled_dot_product_attention (head dims <= 256 pick it), whose two matmuls it would drop."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH):
        if system.name.startswith("ours"):
            return forward_flops(reference, (arch["channels"], arch["image_size"], arch["image_size"]), device)
        x = torch.zeros(1, arch["channels"], arch["image_size"], arch["image_size"], device=device)
        t = torch.zeros(1, dtype=torch.long, device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            system.forward(reference, x, t)
        return counter.get_total_flops()


def trainer_row(args, arch: dict, device, peak: float, flops: float) -> dict:
    """Run the real ``python train.py`` (Lightning, callbacks, logging, data) and read its perf/ metrics."""
    steps = args.warmup + args.steps * args.repeats
    window = max(1, args.steps)
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, str(ROOT / "train.py"), "data=synthetic", f"data.batch_size={arch['batch']}",
               f"data.image_size={arch['image_size']}", f"data.channels={arch['channels']}",
               f"data.dataset.num_images={max(arch['batch'] * 8, 50000 if not args.quick else 64)}",
               "model=unet_cifar10", f"model.base_channels={arch['base']}",
               f"model.channel_mult=[{','.join(map(str, arch['mult']))}]", f"model.num_res_blocks={arch['blocks']}",
               f"model.attn_resolutions=[{','.join(map(str, arch['attn']))}]", "model.dropout=0.1",
               "trainer=gpu" if device.type == "cuda" else "trainer=cpu",
               f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
               f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={window}", "trainer.gradient_clip_val=1.0",
               "optimizer.lr=2e-4", "module.ema_decay=0.9999", "lr_schedule.warmup_steps=0",
               f"module.compile={args.trainer_compile}", "callbacks.sample_grid=null",
               f"callbacks.checkpoint.every_n_train_steps={steps}", f"callbacks.throughput.every_n_steps={window}",
               f"callbacks.throughput.skip_steps={args.warmup}", "logger=csv", f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rates = []
        for csv in Path(run_dir).rglob("metrics.csv"):
            lines = csv.read_text().splitlines()
            col = lines[0].split(",").index("perf/images_per_sec")
            rates += [float(r.split(",")[col]) for r in lines[1:] if r.split(",")[col]]
    if not rates:
        raise RuntimeError("train.py logged no perf/images_per_sec (too few steps for one window?)")
    ips = statistics.median(rates)
    mode = "eager" if args.trainer_compile.lower() in ("false", "null", "none") else args.trainer_compile
    return dict(system="ours: python train.py", mode=mode, params=None, gflop_fwd=flops / 1e9,
                err=None, train_img_s=ips, train_mfu=ips * 3 * flops / peak, peak_mem_gib=None, mem_mib_per_img=None,
                sample_nfe_s=None, sample_mfu=None, wall_s=wall)


# ---- the table ----------------------------------------------------------------------------------
def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = ("| system | mode | params (M) | GFLOP/img fwd | err vs fp32 | train img/s | train MFU | peak mem GiB "
            "| MiB/img | sample NFE/s | sample MFU |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['mode']} | {fmt(r['params'] and r['params'] / 1e6, '.2f')} | "
            f"{fmt(r['gflop_fwd'], '.2f')} | {fmt(r['err'], '.1e')} | {fmt(r['train_img_s'], ',.0f')} | "
            f"{fmt(r['train_mfu'], '.1%')} | {fmt(r['peak_mem_gib'], '.2f')} | {fmt(r['mem_mib_per_img'], '.1f')} | "
            f"{fmt(r['sample_nfe_s'], ',.0f')} | {fmt(r['sample_mfu'], '.1%')} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """Ours (best mode) against diffusers' compiled row: the issue's three targets."""
    best = lambda name, key: max((r for r in rows if r["system"] == name and r[key]), key=lambda r: r[key],
                                 default=None)
    out = []
    peer = next((r for r in rows if r["system"] == "diffusers" and r["mode"] != "eager"), None)
    ours_train, ours_sample = best("ours", "train_img_s"), best("ours", "sample_nfe_s")
    if peer and ours_train:
        out.append(f"training: ours {ours_train['mode']} / diffusers {peer['mode']} = "
                   f"{ours_train['train_img_s'] / peer['train_img_s']:.2f}x (target >= 2x)")
        out.append(f"sampling: ours {ours_sample['mode']} / diffusers {peer['mode']} = "
                   f"{ours_sample['sample_nfe_s'] / peer['sample_nfe_s']:.2f}x (target >= 2x)")
        if ours_train["mem_mib_per_img"] and peer["mem_mib_per_img"]:
            out.append(f"memory per training image: ours {ours_train['mem_mib_per_img']:.1f} MiB, "
                       f"diffusers {peer['mem_mib_per_img']:.1f} MiB (target: no higher)")
    trainer = next((r for r in rows if r["system"].startswith("ours: python train.py")), None)
    bare = next((r for r in rows if r["system"] == "ours" and r["mode"] == trainer["mode"]), None) if trainer else None
    if trainer and bare:
        out.append(f"python train.py / bare step ({bare['mode']}) = {trainer['train_img_s'] / bare['train_img_s']:.1%}"
                   " (target >= 90%)")
    return out


def importable(name: str) -> bool:
    module = IMPORT_NAMES.get(name)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except Exception:  # a peer that is absent or broken is skipped, not fatal
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny U-Net, batch 4, a few steps, eager only")
    p.add_argument("--systems", nargs="+", default=["ours", "diffusers", "lucidrains"], choices=list(SYSTEMS))
    p.add_argument("--compile-modes", nargs="*", default=None,
                   help="torch.compile modes to time besides eager (default: 'default'; none with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (4 with --quick)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default bf16 on a GPU, fp32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="training steps per timed window (default 50, quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed windows; the median is kept (default 5, quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20, quick 1)")
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps per sampling run (default 20, quick 2)")
    p.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default: measured matmul peak)")
    p.add_argument("--no-channels-last", action="store_true", help="ours in NCHW (to measure what channels-last buys)")
    p.add_argument("--trainer", action="store_true", help="also time the real `python train.py` loop")
    p.add_argument("--trainer-compile", default="default", help="module.compile for the train.py row (default|false)")
    p.add_argument("--max-err", type=float, default=3e-2, help="largest relative error of a fast path vs fp32 eager")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the environment here")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dit", default=None, help="conf/model/ option of the ours_dit system (default dit_b2, quick dit_tiny)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu"))
    arch = dict(QUICK if args.quick else FULL)
    arch["batch"] = args.batch_size or arch["batch"]
    arch["dit"] = args.dit or ("dit_tiny" if args.quick else "dit_b2")
    q = args.quick
    args.steps = args.steps or (2 if q else 50)
    args.repeats = args.repeats or (1 if q else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 20)
    args.sample_steps = args.sample_steps or (2 if q else 20)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    modes = ["eager"] + (args.compile_modes if args.compile_modes is not None else ([] if q else ["default"]))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak_flops(
        device, dtype, size=8192 if device.type == "cuda" else 512, seconds=2.0 if device.type == "cuda" else 0.2)
    env = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               torch=torch.__version__, python=platform.python_version(), precision=args.precision,
               batch=arch["batch"], arch=arch, peak_tflops=peak / 1e12, sample_steps=args.sample_steps,
               steps=args.steps, repeats=args.repeats, warmup=args.warmup, command=" ".join(sys.argv))
    for mod in ("lightning", "diffusers", "denoising_diffusion_pytorch"):
        with contextlib.suppress(Exception):
            env[mod] = __import__(mod).__version__
    print(f"# {env['device']}, torch {env['torch']}, {args.precision}, batch {arch['batch']}, "
          f"matmul peak {peak / 1e12:.4g} TFLOP/s, {time.strftime('%Y-%m-%d')}", flush=True)

    rows, failures = [], []
    for name in args.systems:
        if not importable(name):
            print(f"# {name}: not importable, skipped (pip install -e '.[bench]')", flush=True)
            continue
        for mode in modes:
            try:
                row = measure(name, mode, args, arch, device, peak)
            except Exception as e:  # one system's failure (e.g. a compile error) must not hide the others
                failures.append(f"{name} {mode}: {type(e).__name__}: {e}")
                print(f"# {name} {mode}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            if row["err"] > args.max_err:
                failures.append(f"{name} {mode}: err {row['err']:.2e} > --max-err {args.max_err}")
            rows.append(row)
            print(f"# {name} {mode}: {row['train_img_s']:,.0f} train img/s, {row['sample_nfe_s']:,.0f} NFE/s, "
                  f"err {row['err']:.1e}", flush=True)
    if args.trainer:
        ours = next((r for r in rows if r["system"] == "ours"), None)
        try:
            rows.append(trainer_row(args, arch, device, peak, ours["gflop_fwd"] * 1e9 if ours else float("nan")))
        except Exception as e:
            failures.append(f"train.py: {e}")
    print(table(rows))
    for line in ratios(rows):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(env=env, rows=rows, failures=failures), indent=2) + "\n")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
