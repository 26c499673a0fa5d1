"""Sample quality against the classifier-free guidance scale s (s = 1 + w; s = 1 the conditional model,
s = 0 the unconditional one) of a class-conditional checkpoint: the CPU classifier metrics (accuracy:
the fraction of balanced samples classified as requested; FD: the Frechet distance of the dataset
classifier's features to the training split, beside the data floor) and, where a GPU and the Inception
weights are present, FID. The expected shape (Ho & Salimans 2022): accuracy rises with s; FD falls,
then rises as guidance trades diversity for fidelity.

Every row is one ``ddpm.runs.evaluate.evaluate`` call, what ``evaluate.py`` runs (same seed, so the
same x_T and labels at every scale), written to ``<run>/eval/<sampler>_<steps>_<n>_s<scale>/``; the
table is printed as Markdown and saved with a plot beside the run's evaluations.

    python benchmarks/guidance_sweep.py outputs/digits_cfg/checkpoints/last.ckpt --num-samples 1000 \\
        --scales 0 1 1.5 2 3 5 8 --set sampler=ddim sampler.steps=50
    # with FID too (a GPU and $DDPM_INCEPTION_WEIGHTS): --fid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from ddpm.errors import ConfigError, report_config_errors  # noqa: E402
from ddpm.evaluation.inception import inception_weights_path  # noqa: E402
from ddpm.runs.evaluate import evaluate  # noqa: E402
from ddpm.runs.load import load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fid_available() -> bool:
    """A GPU and Inception weights: FID of thousands of samples in seconds rather than hours."""
    try:
        inception_weights_path()
    except ConfigError:
        return False
    return torch.cuda.is_available()


def markdown(rows: list[dict], with_fid: bool) -> str:
    head = ["guidance s", "accuracy", "FD", "worst class (FD)"] + (["FID"] if with_fid else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        worst = max(range(len(r["fd_per_class"])), key=lambda k: r["fd_per_class"][k] or 0)
        cells = [f"{r['guidance_scale']:g}", f"{100 * r['accuracy']:.1f}%", f"{r['fd']:.2f}",
                 f"{worst} ({r['fd_per_class'][worst]:.1f})"] + ([f"{r['fid']:.2f}"] if with_fid else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@report_config_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path")
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.5, 2, 3, 5, 8])
    parser.add_argument("--num-samples", type=int, default=1000, help="balanced over the classes")
    parser.add_argument("--fid", action=argparse.BooleanOptionalAction, default=None,
                        help="also FID (default: when a GPU and Inception weights are present)")
    parser.add_argument("--set", nargs="*", default=[], help="more evaluate.py overrides, e.g. sampler=ddim sampler.steps=50")
    parser.add_argument("--out", type=Path, help="folder for guidance_sweep.{md,json,png} (default: <run>/eval)")
    args = parser.parse_args()

    run_dir, _, module = load_run(args.ckpt_path)  # a bad path fails here, once
    if not module.conditional:
        raise ConfigError(f"{args.ckpt_path} is an unconditional model: a guidance sweep needs a class-conditional or text run")
    with_fid = fid_available() if args.fid is None else args.fid
    metrics = "[fd,accuracy,fid]" if with_fid else "[fd,accuracy]"
    rows = []
    for scale in args.scales:
        overrides = [f"ckpt_path={args.ckpt_path}", f"guidance_scale={scale}", "class_labels=balanced",
                     f"num_samples={args.num_samples}", f"metrics={metrics}", "progress=false", *args.set]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=overrides)
        result = evaluate(cfg)
        rows.append({k: result.get(k) for k in ("guidance_scale", "accuracy", "fd", "fd_floor", "fd_per_class",
                                                "accuracy_per_class", "fid", "images_per_second")})
    floor = rows[0]["fd_floor"]
    table = (f"{args.num_samples} balanced samples per scale; FD data floor (test vs train split) {floor:.2f}\n\n"
             + markdown(rows, with_fid))
    print("\n" + table)

    out = args.out or run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "guidance_sweep.md").write_text(f"checkpoint: {args.ckpt_path}\n\n{table}\n")
    (out / "guidance_sweep.json").write_text(json.dumps({"ckpt_path": str(args.ckpt_path), "num_samples":
                                                         args.num_samples, "rows": rows}, indent=2) + "\n")
    scales = [r["guidance_scale"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(scales, [r["fd"] for r in rows], marker="o", color="C0", label="FD (classifier features)")
    ax.axhline(floor, color="C0", ls=":", label="FD data floor (test vs train)")
    if with_fid:
        ax.plot(scales, [r["fid"] for r in rows], marker="s", color="C2", label="FID (Inception)")
    ax.set(xlabel="guidance scale s (1: conditional, 0: unconditional)", ylabel="Frechet distance",
           title=f"Guidance sweep, {args.num_samples} balanced samples")
    acc = ax.twinx()
    acc.plot(scales, [100 * r["accuracy"] for r in rows], marker="^", color="C3", label="accuracy")
    acc.set_ylabel("accuracy (% classified as requested)", color="C3")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "guidance_sweep.png", dpi=120)
    print(f"\nwritten: {out / 'guidance_sweep.md'}, {out / 'guidance_sweep.json'}, {out / 'guidance_sweep.png'}")


if __name__ == "__main__":
    main()
