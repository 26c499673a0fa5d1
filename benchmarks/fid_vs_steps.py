"""FID (or the CPU classifier's FD) against the number of network evaluations for each sampler and run (the layout
of the DDIM paper's Table 1; EDM's FID against NFE).

Every cell is one ``ddpm.runs.evaluate.evaluate`` call, what ``evaluate.py`` runs (same code path, same seed, the
checkpoint loaded by ``ddpm.runs.load.load_run``, reference statistics cached after the first), written to
``<run>/eval/<sampler>_<steps>_<n>/`` (with ``--out``: ``OUT/<run label>_<sampler>_<steps>/``, and a cell whose
metrics.json is there already is read, not recomputed); the table is printed as Markdown and saved with a plot.
Columns are network evaluations (NFE): ``--steps`` are solver steps, ``--nfe`` asks for at most that many
evaluations (Heun: 2 steps - 1 per step count, so NFE 10 is Heun's 5 steps, 9 evaluations).

    python benchmarks/fid_vs_steps.py outputs/train/RUN/checkpoints/last.ckpt --num-samples 10000 \\
        --sampler ddpm --sampler ddim --sampler ddim:eta=1.0 --sampler dpm_solver --steps 10 20 50 100
    # several runs side by side, the CPU's FD (EDM / flow runs: default samplers heun, euler, dpmpp_2m, dpmpp_3m)
    python benchmarks/fid_vs_steps.py --metric fd --nfe 5 10 20 35 50 --num-samples 1000 --out OUT \\
        --run digits_cfg CFG/checkpoints/last.ckpt --run digits_edm EDM/checkpoints/last.ckpt
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


VP_SAMPLERS = ["ddpm", "ddim", "ddim:eta=1.0", "dpm_solver"]
CONTINUOUS_SAMPLERS = ["heun", "euler", "dpmpp_2m", "dpmpp_3m"]  # EDM and flow runs (issue 24)


def steps_for_nfe(name: str, nfe: int) -> int:
    """Solver steps that make at most ``nfe`` network evaluations: Heun's 2 steps - 1, one a step otherwise."""
    return max(1, (nfe + 1) // 2) if name == "heun" else nfe


def markdown(rows: dict, columns: list[int], fmt) -> str:
    lines = ["| run / sampler | " + " | ".join(f"NFE {s}" for s in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(cells[s]) if s in cells else "—" for s in columns) + " |")
    return "\n".join(lines)


def cell(overrides: list[str], out_dir: Path | None) -> dict:
    """One evaluation (``evaluate.py`` with ``overrides``), or the metrics.json already in ``out_dir``."""
    if out_dir is not None and (out_dir / "metrics.json").is_file():
        return json.loads((out_dir / "metrics.json").read_text())
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides + ([f"out_dir={out_dir}"] if out_dir else []))
    return evaluate(cfg)


@report_config_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", nargs="?", help="one run's checkpoint (or give runs with --run)")
    parser.add_argument("--run", nargs="+", action="append", metavar="LABEL CKPT [OVERRIDE]",
                        help="a run's label, checkpoint and its own evaluate.py overrides (repeatable)")
    parser.add_argument("--sampler", action="append",
                        help="NAME[:key=value,...] (repeatable); default: ddpm, ddim, ddim:eta=1.0, dpm_solver for a VP "
                             "run, heun, euler, dpmpp_2m, dpmpp_3m for EDM and flow")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100],
                        help="solver steps for the samplers that take them")
    parser.add_argument("--nfe", type=int, nargs="+", help="instead of --steps: at most this many network evaluations")
    parser.add_argument("--metric", default="fid", choices=["fid", "fd"], help="fid (Inception) or fd (the CPU classifier)")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--set", nargs="*", default=[], help="more evaluate.py overrides, e.g. reference_count=10000 batch_size=500")
    parser.add_argument("--only-cached", action="store_true", help="with --out: read the cells already there, run none")
    parser.add_argument("--out", type=Path, help="folder for the cells and fid_vs_steps.{md,json,png} (default: <run>/eval)")
    args = parser.parse_args()

    runs = [(r[0], r[1], r[2:]) for r in args.run or []] or [("", args.ckpt_path, [])]
    if any(len(r) < 2 for r in args.run or []) or runs[0][1] is None:
        raise ConfigError("give a checkpoint, or runs as --run LABEL CKPT [OVERRIDE ...]")
    score, speed, run_dir = {}, {}, None
    for label, ckpt, run_overrides in runs:
        run_dir, _, module = load_run(ckpt)  # a bad path fails here, once, not as a skipped cell each
        for name, sampler_overrides, sampler_label in [parse_sampler(s) for s in args.sampler or (
                VP_SAMPLERS if module.is_vp else CONTINUOUS_SAMPLERS)]:
            row = f"{label}: {sampler_label}" if label else sampler_label
            counts = [None] if name == "ddpm" else [steps_for_nfe(name, n) for n in args.nfe] if args.nfe else args.steps
            for i, steps in enumerate(counts):  # DDPM always takes all T steps
                overrides = [f"ckpt_path={ckpt}", f"sampler={name}", *sampler_overrides, f"num_samples={args.num_samples}",
                             f"metrics=[{args.metric}]", "progress=false", *args.set, *run_overrides]
                if steps is not None:
                    overrides.append(f"sampler.steps={steps}")
                out_dir = args.out / f"{label or 'run'}_{name}_{steps}" if args.out else None
                if args.only_cached and not (out_dir and (out_dir / "metrics.json").is_file()):
                    continue
                try:
                    result = cell(overrides, out_dir)
                except ConfigError as e:  # e.g. more steps than the schedule has
                    print(f"skipped {row} at {steps} steps: {e}")
                    continue
                column = args.nfe[i] if args.nfe and steps is not None else result["steps"]  # --nfe: the column asked for
                score.setdefault(row, {})[column] = result[args.metric]
                speed.setdefault(row, {})[column] = result["images_per_second"]

    columns = sorted({s for cells in score.values() for s in cells})
    name = args.metric.upper()
    heun = "; Heun makes 2 steps - 1 (at most the column's)" if args.nfe else ""
    table = (f"{name} ({args.num_samples} samples) against network evaluations (NFE{heun})\n\n"
             + markdown(score, columns, lambda v: f"{v:.2f}")
             + "\n\nimages per second\n\n" + markdown(speed, columns, lambda v: f"{v:.3g}"))
    print("\n" + table)

    out = args.out or run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = [ckpt for _, ckpt, _ in runs]
    (out / "fid_vs_steps.md").write_text(f"checkpoints: {', '.join(checkpoints)}\n\n{table}\n")
    (out / "fid_vs_steps.json").write_text(json.dumps({"checkpoints": checkpoints, "num_samples": args.num_samples,
                                                       "metric": args.metric, args.metric: score,
                                                       "images_per_second": speed}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    run_labels = list(dict.fromkeys(label.partition(": ")[0] for label in score if ": " in label))
    sampler_labels = list(dict.fromkeys(label.rpartition(": ")[2] for label in score))
    for label, cells in score.items():  # a colour per sampler, a line style per run
        xs = sorted(cells)
        run = label.partition(": ")[0] if ": " in label else None
        style = ("-", "--", ":", "-.")[run_labels.index(run) % 4] if run else "-"
        ax.plot(xs, [cells[x] for x in xs], marker="o", linestyle=style, label=label,
                color=f"C{sampler_labels.index(label.rpartition(': ')[2]) % 10}")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel=f"{name} ({args.num_samples} samples)",
           title=f"{name} against network evaluations")
    ax.set_xticks(columns, [str(c) for c in columns])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fid_vs_steps.png", dpi=120)
    print(f"\nwritten: {out / 'fid_vs_steps.md'}, {out / 'fid_vs_steps.json'}, {out / 'fid_vs_steps.png'}")


if __name__ == "__main__":
    main()
