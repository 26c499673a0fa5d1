"""The bake-off: ours beside diffusers, denoising-diffusion-pytorch and k-diffusion on the same data, device,
batch, threads and wall-clock, scored by one evaluator.

    python benchmarks/bakeoff.py --device cpu                 # MNIST, 10 min of training a row, 2 threads
    python benchmarks/bakeoff.py --device cuda --data mnist fashion_mnist --budget 300
    python benchmarks/bakeoff.py --quick                      # seconds: every system starts, trains, is scored

Each row trains one system for ``--budget`` seconds of training wall-clock (start-up, and the sampling at the
points along the way, are timed apart), through the system's own library code (benchmarks/bakeoff_contenders.py:
only the loop that feeds batches is ours). At ``--points`` fractions of the budget the clock stops and the
system's averaged weights draw ``--num-samples`` images with its own recommended fast sampler. Every system's
images go through one uint8 path (``ddpm.data.pixels.to_uint8``) into one evaluator: the dataset classifier of
``ddpm.evaluation.classifier`` (CPU), which gives

    FD          the Frechet distance of its features to the training split's (as FID, with domain features)
    confident   the share of samples it assigns to one class with probability >= 0.9: a digit, not a blob
    floor       FD of the same number of real test images: what a perfect model scores at this sample count

and, with ``--fid`` and the Inception weights (``$DDPM_INCEPTION_WEIGHTS``), FID against the training split.

Fairness, printed with the table: every network within 5% of ours in parameter count, the same image size,
batch, data order, thread count and device; each peer at its documented defaults and again with its learning
rate and warm-up scaled to the budget (the scaled row trains for the steps its defaults row reached). Writes
``bakeoff.json``, ``bakeoff.md`` (the table), ``fd_vs_time.png`` and ``samples.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' samplers draw progress bars; tqdm reads this on import

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bakeoff_contenders import IMPORTS, PEERS, Contender, Setup, build_ours, ours_network  # noqa: E402
from ddpm.data.pixels import from_uint8, to_uint8  # noqa: E402

CONFIDENT = 0.9
# Our recipes per device (the repo's recommendations), each with the sampler its samples are scored with; the
# first one's network sets the parameter count every peer is matched to.
DPM20 = ["sampler=dpm_solver", "sampler.steps=20"]
# in a recipe of ours: the optimizer steps our first row reached in the budget (a recipe scaled to the budget, as
# the peers' scaled rows are: its cosine learning-rate decay ends where the budget does)
BUDGET_STEPS = "BUDGET_STEPS"
OURS = {
    "cpu": [("ours (mnist_cpu)", ["experiment=mnist_cpu"], []),  # its own sampler: ancestral DDPM, 50 steps
            ("ours (mnist_cpu, cosine decay to the budget)",
             ["experiment=mnist_cpu", "lr_schedule=cosine", f"trainer.max_steps={BUDGET_STEPS}"], []),
            ("ours (mnist_cpu_ddpm: before)", ["experiment=mnist_cpu_ddpm"], ["sampler=ddpm", "sampler.steps=50"]),
            ("ours (mnist_cpu_edm)", ["experiment=mnist_cpu_edm"], []),  # Heun 18 steps (35 NFE)
            ("ours (mnist_cpu_flow)", ["experiment=mnist_cpu_flow"], [])],
    "cuda": [("ours (mnist, v, min-SNR, cosine)", ["experiment=mnist", "denoiser.prediction_type=v",
                                                    "loss.min_snr_gamma=5", "schedule=cosine"], DPM20),
             ("ours (mnist)", ["experiment=mnist"], DPM20)],
    "quick": [("ours (quick)", ["model=unet_tiny", "lr_schedule.warmup_steps=5"], ["sampler=dpm_solver", "sampler.steps=5"]),
              ("ours (quick, cosine decay to the budget)", ["model=unet_tiny", "lr_schedule.warmup_steps=5",
               "lr_schedule=cosine", f"trainer.max_steps={BUDGET_STEPS}"], ["sampler=dpm_solver", "sampler.steps=5"])],
}
SYSTEMS = ("ours", "diffusers", "lucidrains", "kdiffusion")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--data", nargs="+", default=None, help="mnist | fashion_mnist | digits (default: mnist; --quick: digits)")
    p.add_argument("--data-root", default=os.environ.get("DDPM_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--budget", type=float, default=None, help="training seconds a row (default: cpu 600, cuda 300)")
    p.add_argument("--points", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                   help="fractions of the budget at which samples are drawn and scored")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples scored at the end of the budget, the table's FD (default: cpu 1000, cuda 10000)")
    p.add_argument("--curve-samples", type=int, default=None,
                   help="samples scored at each point, the curve of FD against time; at the last point the first "
                        "this many of the final samples (default: cpu 250, cuda 2000)")
    p.add_argument("--sample-batch", type=int, default=500)
    p.add_argument("--batch", type=int, default=64, help="training batch of every system")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU count)")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--settings", nargs="+", default=["defaults", "scaled"], choices=["defaults", "scaled"],
                   help="the peers' settings: their documented defaults, and LR and warm-up scaled to the budget")
    p.add_argument("--scaled-lr", type=float, default=1e-3, help="the peers' learning rate in their scaled rows")
    p.add_argument("--ours", action="append", nargs="+", metavar="OVERRIDE", default=None,
                   help="a recipe of ours as train.py overrides (repeat for more rows; default: the device's recipe); "
                        "sampler overrides are those of the scored samples")
    p.add_argument("--fid", action="store_true", help="also Inception FID (needs $DDPM_INCEPTION_WEIGHTS; slow on a CPU)")
    p.add_argument("--save-runs", action="store_true",
                   help="save each of our rows as a run (config.yaml, checkpoints/last.ckpt) that evaluate.py and "
                        "benchmarks/sampler_probe.py load, and each peer's averaged weights in its own format")
    p.add_argument("--keep", default=None, metavar="JSON",
                   help="rows already run (a partial_<data>.json of an earlier run into the same --out): kept, not rerun")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: outputs/bakeoff/<date>)")
    p.add_argument("--quick", action="store_true", help="digits, small networks, 1 s a row: a smoke test of every system")
    args = p.parse_args(argv)
    quick = args.quick
    args.data = args.data or (["digits"] if quick else ["mnist"])
    args.budget = args.budget or (1.0 if quick else 300.0 if args.device == "cuda" else 600.0)
    args.num_samples = args.num_samples or (32 if quick else 10000 if args.device == "cuda" else 1000)
    args.curve_samples = min(args.curve_samples or (16 if quick else 2000 if args.device == "cuda" else 250),
                             args.num_samples)
    if quick:
        args.batch, args.points = min(args.batch, 16), [0.5, 1.0]
    args.points = sorted(set(args.points))
    if not args.points or args.points[0] <= 0 or args.points[-1] > 1:
        p.error(f"--points {args.points}: fractions in (0, 1]")
    return args


# ---- data and evaluator ----------------------------------------------------------------------------------
def datamodule(name: str, root: str):
    from ddpm.data import images
    from ddpm.data.datamodule import ImageDataModule

    size = 8 if name == "digits" else 28
    dataset = getattr(images, name)
    kwargs = {} if name == "digits" else {"root": root}
    return ImageDataModule(functools.partial(dataset), size, 1, name=name, batch_size=16, **kwargs)


def train_images(dm) -> torch.Tensor:
    """The training split as stored: integers (N, C, H, W) in 0..max_value, and max_value."""
    dm.setup("fit")
    return dm.dataset.images, dm.dataset.max_value


class Evaluator:
    """The dataset classifier's FD and confident share of uint8 (N, H, W, C) images; FID with --fid."""

    def __init__(self, dm, fid: bool, device: torch.device):
        from ddpm.evaluation.classifier import load_or_train, recipe_for, splits

        self.classifier = load_or_train(dm, progress=True)
        self.test = splits(dm, recipe_for(dm.dataset_name))["test"][0]  # uint8 (N, H, W, C), for the floor
        self.dm, self.fid, self.device = dm, fid, device

    def score(self, images: np.ndarray) -> dict:
        from ddpm.evaluation.classifier_metrics import frechet_to

        features, logits = self.classifier.features(images)
        logits = torch.as_tensor(logits, dtype=torch.float64)
        confident = (logits.softmax(1).max(1).values >= CONFIDENT).double().mean().item()
        counts = np.bincount(logits.argmax(1).numpy(), minlength=logits.shape[1])
        out = {"fd": frechet_to(features, self.classifier.reference), "confident": confident,
               "class_share": (counts / counts.sum()).round(4).tolist()}
        if self.fid:
            out["fid"] = self.inception_fid(images)
        return out

    def floor(self, n: int) -> dict:
        """The evaluator on ``n`` real test images (all of them when there are fewer)."""
        return {"count": min(n, len(self.test)), **self.score(self.test[:n])}

    def inception_fid(self, images: np.ndarray) -> float:
        """FID of the images against the whole training split (pool3 statistics cached in $DDPM_FID_CACHE)."""
        from ddpm.evaluation.distances import frechet_distance
        from ddpm.evaluation.feature_stats import FeatureStats
        from ddpm.evaluation.inception import InceptionFeatures, extract_features
        from ddpm.evaluation.reference import reference_statistics

        if not hasattr(self, "_inception"):
            device = self.device
            self._inception = InceptionFeatures(None).to(device)
            cache = os.environ.get("DDPM_FID_CACHE", "~/.cache/ddpm/fid")
            self._fid_reference = reference_statistics(self.dm, self._inception, cache_dir=cache, device=device)
        stats = FeatureStats.from_features(extract_features(images, self._inception, device=self.device)["pool3"])
        return frechet_distance(stats.mu, stats.sigma, self._fid_reference.mu, self._fid_reference.sigma)


# ---- one row ---------------------------------------------------------------------------------------------
def sample_images(c: Contender, n: int, batch: int, seed: int) -> tuple[np.ndarray, float]:
    """n uint8 (N, H, W, C) samples in chunks of ``batch`` (chunk k seeded seed + k), and the seconds taken."""
    start = time.perf_counter()
    chunks = [to_uint8(c.sample(min(batch, n - lo), seed + k)) for k, lo in enumerate(range(0, n, batch))]
    return np.concatenate(chunks), time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_and_score(c: Contender, data: torch.Tensor, max_value: float, args, evaluator: Evaluator,
                    device: torch.device, out: Path) -> dict:
    """Train ``c`` for the budget on ``data`` (integers (N, C, H, W) on the device), scoring at each point."""
    n, batch = len(data), args.batch
    order = torch.Generator().manual_seed(args.seed)  # the same data order for every row
    perm, pos = torch.randperm(n, generator=order), 0
    marks = [args.budget * f for f in args.points]
    torch.manual_seed(args.seed)  # the global generators, which the peers draw their noise from
    elapsed, step, losses, points, samples = 0.0, 0, [], [], None
    while marks:
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos:pos + batch].to(device)
        pos += batch
        start = time.perf_counter()
        loss = c.train_step(from_uint8(data[idx], max_value))
        if step % 10 == 9:
            sync(device)
        elapsed += time.perf_counter() - start
        losses.append(loss)
        step += 1
        if elapsed >= marks[0]:
            sync(device)
            marks.pop(0)
            n = args.num_samples if not marks else args.curve_samples  # the full count at the end only
            samples, seconds = sample_images(c, n, args.sample_batch, args.seed + 1)
            point = {"train_seconds": elapsed, "steps": step, "sample_seconds": seconds, "samples": n,
                     **evaluator.score(samples[:args.curve_samples])}
            if not marks:
                final = {"samples": n, "sample_seconds": seconds, **evaluator.score(samples)}
            points.append(point)
            print(f"  {c.name}: {elapsed:7.1f} s, {step:6d} steps, FD({args.curve_samples}) {point['fd']:8.3f}, "
                  f"confident {point['confident']:.3f} (sampling {seconds:.1f} s)", flush=True)
    print(f"  {c.name}: FD({args.num_samples}) {final['fd']:.3f}, confident {final['confident']:.3f}", flush=True)
    loss_curve = torch.stack(losses).float().cpu()
    window = max(1, len(loss_curve) // 50)
    np.savez_compressed(out / f"{slug(c.name)}.npz", images=samples)
    if args.save_runs and c.config is not None:
        save_run(c, out / slug(c.name), step)
    elif args.save_runs and c.save is not None:
        c.save(out / slug(c.name))
    return {
        "name": c.name, "system": c.system, "setting": c.setting, "params": c.params, "sampler": c.sampler,
        "nfe": c.nfe, "recipe": c.recipe, "steps": step, "train_seconds": elapsed,
        "train_img_s": step * batch / elapsed, "sample_img_s": args.num_samples / final["sample_seconds"],
        "points": points, "final": final, "fd": final["fd"], "confident": final["confident"],
        "loss_curve": [[int(i * window), float(loss_curve[i * window:(i + 1) * window].mean())]
                       for i in range(len(loss_curve) // window)],
    }


def save_run(c: Contender, run_dir: Path, step: int) -> None:
    """Our row as a run directory: its composed config and a checkpoint of the module's weights."""
    from omegaconf import OmegaConf

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(c.config, run_dir / "config.yaml")
    checkpoint = {"state_dict": c.handle.state_dict(), "global_step": step}
    c.handle.on_save_checkpoint(checkpoint)  # what the module records beside its weights (its process, ...)
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


# ---- the run ---------------------------------------------------------------------------------------------
def rows_for(args, mode: str):
    """(name, builder(setup, total_steps, layout) -> Contender, system, setting) for each row: our first recipe,
    the peers, then our other recipes."""
    ours = []
    if "ours" in args.systems:
        recipes = OURS[mode] if not args.ours else [(None, [o for o in r if not o.startswith("sampler")],
                                                     [o for o in r if o.startswith("sampler")]) for r in args.ours]
        for name, recipe, sampler in recipes:
            ours.append((name, functools.partial(_ours, recipe=recipe, name=name, sampler=sampler), "ours", "recipe"))
    peers = [(f"{system} ({setting})", functools.partial(_peer, system=system, setting=setting), system, setting)
             for system in args.systems if system != "ours" for setting in args.settings]
    return ours[:1] + peers + ours[1:]


def _ours(setup: Setup, total_steps, layout, recipe, name, sampler) -> Contender:
    if any(BUDGET_STEPS in o for o in recipe):  # scaled to the budget, as a peer's scaled row is
        if total_steps is None:
            raise SystemExit(f"{name}: {BUDGET_STEPS} needs a first row of ours to have run (steps reached)")
        recipe = [o.replace(BUDGET_STEPS, str(total_steps)) for o in recipe]
    return build_ours(setup, recipe, name=name, sampler=sampler)


def _peer(setup: Setup, total_steps, layout, system, setting) -> Contender:
    return PEERS[system](setup, setting, total_steps, layout)


def environment(device: torch.device, threads: int) -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "diffusers", "denoising-diffusion-pytorch", "k-diffusion", "ema-pytorch", "lightning"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host_cpu": cpu, "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu})",
            "threads": threads, "versions": versions}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_dataset(name: str, args, device: torch.device, out: Path) -> dict:
    mode = "quick" if args.quick else device.type
    dm = datamodule(name, args.data_root)
    images, max_value = train_images(dm)
    data = images.to(device)
    evaluator = Evaluator(dm, args.fid, device)
    recipe0 = (OURS[mode][0][1] if not args.ours else [o for o in args.ours[0] if not o.startswith("sampler")])
    layout, target = ours_network(recipe0, dm.image_size, dm.channels)
    setup = Setup(dm.image_size, dm.channels, args.batch, len(data), device, target, args.quick, args.scaled_lr)
    results, steps_reached = [], {}
    # a kept row of ours is known by its name, a peer's by (system, setting): its printed name is the library's
    kept = {r["name"] if r["system"] == "ours" else (r["system"], r["setting"]): r
            for r in json.loads(Path(args.keep).read_text())} if args.keep else {}
    for row_name, build, system, setting in rows_for(args, mode):
        old = kept.get(row_name if system == "ours" else (system, setting))
        if old is not None and "skipped" not in old:
            print(f"{old['name']}: kept from {args.keep}", flush=True)
            results.append(old)
            if setting == "defaults" or (system == "ours" and system not in steps_reached):
                steps_reached[system] = old["steps"]
            continue
        if system != "ours":
            try:
                __import__(IMPORTS[system])
            except ImportError as e:
                print(f"{row_name}: skipped, {IMPORTS[system]} is not installed ({e})", flush=True)
                results.append({"name": row_name, "system": system, "setting": setting, "skipped": str(e)})
                continue
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        contender = build(setup, steps_reached.get(system), layout)
        startup = time.perf_counter() - start
        print(f"{contender.name}: {contender.params:,} parameters, {contender.sampler}; start-up {startup:.1f} s", flush=True)
        load_before = load_average()
        result = train_and_score(contender, data, max_value, args, evaluator, device, out)
        result.update(startup_seconds=startup, load_before=load_before, load_after=load_average())
        if setting == "defaults" or (system == "ours" and system not in steps_reached):
            steps_reached[system] = result["steps"]
        results.append(result)
        del contender
        (out / f"partial_{name}.json").write_text(json.dumps(results, indent=1))  # a cut-short run keeps its rows
    floor, curve_floor = evaluator.floor(args.num_samples), evaluator.floor(args.curve_samples)
    return {"data": name, "image_size": dm.image_size, "train_images": len(data), "floor": floor, "curve_floor": curve_floor,
            "classifier": {k: evaluator.classifier.info.get(k) for k in ("test_accuracy", "floor_fd", "test_count")},
            "target_params": setup.target_params, "rows": results}


def fairness_lines(args, result: dict, env: dict) -> list[str]:
    rows = [r for r in result["rows"] if "skipped" not in r]
    peers = [r for r in rows if r["system"] != "ours"]  # our other recipes keep their own networks
    spread = max(abs(r["params"] - result["target_params"]) / result["target_params"] for r in peers) if peers else 0
    return [
        f"- data: {result['data']} ({result['train_images']:,} training images, {result['image_size']} px); "
        f"the same data order for every row",
        f"- device: {env['device']}, {env['threads']} torch threads; batch {args.batch} for every system",
        f"- parameters: ours {result['target_params']:,} (our first row); every peer's network within {spread:.1%} of "
        "it (limit 5%)",
        f"- budget: {args.budget:.0f} s of training wall-clock a row (start-up and sampling timed apart); "
        f"points at {', '.join(f'{p:g}' for p in args.points)} of it",
        f"- evaluator: the {result['data']} classifier's FD (test accuracy {result['classifier']['test_accuracy']}) "
        f"and confident share (p >= {CONFIDENT}) of {args.num_samples} samples at the end ({args.curve_samples} at "
        f"each point of the curve); floor = as many real test images",
        "- peers: documented defaults, and LR and warm-up scaled to the budget (scaled LR "
        f"{args.scaled_lr:g}, warm-up 5% of the steps the defaults row reached)",
    ]


def table(result: dict) -> list[str]:
    """The markdown table: one line a row, then the data floor."""
    mids = _first_points(result)  # the points before the last: their FD gets a column each
    header = ["row", "params", "steps", "train img/s", "LR, warm-up, decay", "sampler (NFE)", "sample img/s",
              *(f"FD({p['samples']}) at {p['train_seconds']:.0f} s" for p in mids), "FD", "confident"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |")
            continue
        cells = [r["name"], f"{r['params'] / 1e6:.3f}M", f"{r['steps']:,}", f"{r['train_img_s']:.0f}",
                 f"{r['recipe'].get('lr'):g}, {r['recipe'].get('warmup')}, {r['recipe'].get('lr_decay', 'none')}",
                 f"{r['sampler']} ({r['nfe']})",
                 f"{r['sample_img_s']:.1f}", *(f"{p['fd']:.2f}" for p in r["points"][:-1]),
                 f"**{r['fd']:.2f}**", f"{r['confident']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    floor, curve = result["floor"], result["curve_floor"]
    cells = [f"data floor (test images)", *[""] * 6, *[f"{curve['fd']:.2f}"] * len(mids), f"{floor['fd']:.2f}",
             f"{floor['confident']:.3f}"]
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def _first_points(result: dict) -> list[dict]:
    rows = [r for r in result["rows"] if "skipped" not in r]
    return rows[0]["points"][:-1] if rows else []


def verdict(result: dict) -> list[str]:
    rows = [r for r in result["rows"] if "skipped" not in r]
    ours = [r for r in rows if r["system"] == "ours"]
    peers = [r for r in rows if r["system"] != "ours"]
    if not ours or not peers:
        return []
    best, peer = min(ours, key=lambda r: r["fd"]), min(peers, key=lambda r: r["fd"])
    floor = result["floor"]["fd"]
    return [f"- our best: {best['name']} FD {best['fd']:.2f}; best peer row: {peer['name']} FD {peer['fd']:.2f} "
            f"(ratio {best['fd'] / peer['fd']:.2f}, target <= 0.5); floor {floor:.2f} "
            f"(ours / floor {best['fd'] / floor:.2f}, target <= 3)"]


def figures(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for result in results:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in result["rows"]:
            if "skipped" in r:
                continue
            ax.plot([p["train_seconds"] for p in r["points"]], [p["fd"] for p in r["points"]], "o-", label=r["name"])
        floor = result["curve_floor"]
        ax.axhline(floor["fd"], color="k", ls="--", lw=1, label=f"data floor ({floor['count']} test images)")
        ax.set(xlabel="training wall-clock (s)", ylabel=f"classifier FD of {floor['count']} samples", yscale="log", title=f"bake-off: {result['data']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"fd_vs_time_{result['data']}.png", dpi=120)
        plt.close(fig)
        rows = [r for r in result["rows"] if "skipped" not in r]
        fig, axes = plt.subplots(1, len(rows), figsize=(2.2 * len(rows), 2.6), squeeze=False)
        for ax, r in zip(axes[0], rows):
            with np.load(out / f"{slug(r['name'])}.npz") as f:
                imgs = f["images"][:36]
            k = int(np.ceil(np.sqrt(len(imgs))))
            h, w, ch = imgs.shape[1:]
            grid = np.zeros((k * h, k * w, ch), np.uint8)
            for i, im in enumerate(imgs):
                grid[(i // k) * h:(i // k + 1) * h, (i % k) * w:(i % k + 1) * w] = im
            ax.imshow(grid[..., 0] if ch == 1 else grid, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{r['name']}\nFD {r['fd']:.2f}", fontsize=7)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"samples_{result['data']}.png", dpi=120)
        plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    out = Path(args.out or ROOT / "outputs" / "bakeoff" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device, threads)
    results = [run_dataset(name, args, device, out) for name in args.data]
    report = [f"# Bake-off, {env['date']}", ""]
    for result in results:
        report += [f"## {result['data']}", "", *fairness_lines(args, result, env), "", *table(result), "", *verdict(result), ""]
    text = "\n".join(report)
    print(text)
    (out / "bakeoff.md").write_text(text)
    (out / "bakeoff.json").write_text(json.dumps({"args": vars(args), "environment": env, "results": results}, indent=1))
    figures(results, out)
    print(f"wrote {out}/bakeoff.json, bakeoff.md, fd_vs_time_*.png, samples_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
