"""FID against the number of sampling steps for each sampler (the layout of the DDIM paper's Table 1).

Every cell is one ``ddpm.runs.evaluate.evaluate`` call, what ``evaluate.py`` runs (same code path,
same seed, the checkpoint loaded by ``ddpm.runs.load.load_run``, reference statistics cached after
the first), written to ``<run>/eval/<sampler>_<steps>_<n>/``; the table is printed as Markdown
and saved with a plot beside the run's evaluations.

    python benchmarks/fid_vs_steps.py outputs/train/RUN/checkpoints/last.ckpt --num-samples 10000 \\
        --sampler ddpm --sampler ddim --sampler ddim:eta=1.0 --sampler dpm_solver --steps 10 20 50 100
    # a smoke run on the CPU: 8 samples against 8 reference images
    python benchmarks/fid_vs_steps.py /tmp/tinyrun/checkpoints/last.ckpt --num-samples 8 --steps 5 10 \\
        --set reference_count=8 kid_subset_size=8 kid_subsets=2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from ddpm.errors import ConfigError, report_config_errors  # noqa: E402
from ddpm.runs.evaluate import evaluate  # noqa: E402
from ddpm.runs.load import load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_sampler(text: str) -> tuple[str, list[str], str]:
    """``ddim:eta=1.0,spacing=quadratic`` -> ("ddim", ["sampler.eta=1.0", "sampler.spacing=quadratic"], label)."""
    name, _, opts = text.partition(":")
    overrides = [f"sampler.{kv}" for kv in opts.split(",") if kv]
    return name, overrides, name + (f" ({opts.replace(',', ', ')})" if opts else "")


def markdown(rows: dict, columns: list[int], fmt) -> str:
    lines = ["| sampler | " + " | ".join(f"S={s}" for s in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(cells[s]) if s in cells else "—" for s in columns) + " |")
    return "\n".join(lines)


@report_config_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path")
    parser.add_argument("--sampler", action="append",
                        help="NAME[:key=value,...] (repeatable); default: ddpm, ddim, ddim:eta=1.0, dpm_solver")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100],
                        help="steps for the samplers that take them")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--set", nargs="*", default=[], help="more evaluate.py overrides, e.g. reference_count=10000 batch_size=500")
    parser.add_argument("--out", type=Path, help="folder for fid_vs_steps.{md,json,png} (default: <run>/eval)")
    args = parser.parse_args()

    run_dir, _, _ = load_run(args.ckpt_path)  # a bad path fails here, once, not as a skipped cell each
    samplers = [parse_sampler(s) for s in args.sampler or ["ddpm", "ddim", "ddim:eta=1.0", "dpm_solver"]]
    fid, speed = {}, {}
    for name, sampler_overrides, label in samplers:
        for steps in [None] if name == "ddpm" else args.steps:  # DDPM always takes all T steps
            overrides = [f"ckpt_path={args.ckpt_path}", f"sampler={name}", *sampler_overrides,
                         f"num_samples={args.num_samples}", "metrics=[fid]", "progress=false", *args.set]
            if steps is not None:
                overrides.append(f"sampler.steps={steps}")
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("evaluate", overrides=overrides)
            try:
                result = evaluate(cfg)
            except ConfigError as e:  # e.g. more steps than the schedule has
                print(f"skipped {label} at {steps} steps: {e}")
                continue
            fid.setdefault(label, {})[result["steps"]] = result["fid"]
            speed.setdefault(label, {})[result["steps"]] = result["images_per_second"]

    columns = sorted({s for cells in fid.values() for s in cells})
    table = (f"FID ({args.num_samples} samples) against sampling steps S\n\n" + markdown(fid, columns, lambda v: f"{v:.2f}")
             + "\n\nimages per second\n\n" + markdown(speed, columns, lambda v: f"{v:.3g}"))
    print("\n" + table)

    out = args.out or run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid_vs_steps.md").write_text(f"checkpoint: {args.ckpt_path}\n\n{table}\n")
    (out / "fid_vs_steps.json").write_text(json.dumps({"ckpt_path": str(args.ckpt_path), "num_samples": args.num_samples,
                                                       "fid": fid, "images_per_second": speed}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, cells in fid.items():
        xs = sorted(cells)
        ax.plot(xs, [cells[x] for x in xs], marker="o", label=label)
    ax.set(xscale="log", xlabel="sampling steps S (network calls)", ylabel=f"FID ({args.num_samples} samples)",
           title="FID against sampling steps")
    ax.set_xticks(columns, [str(c) for c in columns])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fid_vs_steps.png", dpi=120)
    print(f"\nwritten: {out / 'fid_vs_steps.md'}, {out / 'fid_vs_steps.json'}, {out / 'fid_vs_steps.png'}")


if __name__ == "__main__":
    main()
