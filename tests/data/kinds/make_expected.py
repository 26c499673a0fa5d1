"""What a run of one kind draws, as arrays: writes tests/data/kinds/<kind>/expected.npz, and
tests/e2e/test_kind_fixtures.py draws the same with today's code and compares.

    python tests/data/kinds/make_expected.py KIND RUN_DIR OUT.npz [--autoencoder CKPT]

KIND: unconditional | class | text | latent | autoencoder. Runs against the code of commit bb9fe6c
and against today's: it uses only ``ddpm.runs.load.load_run``, ``module.sample``,
``ddpm.diffusion.samplers.DDIMSampler`` and ``ddpm.runs.autoencoder_load.load_autoencoder``.
``--autoencoder CKPT``: for a latent run, load it with ``module.autoencoder_ckpt`` replaced by CKPT
(in a temporary copy of the run directory): the path the run recorded is absolute, that of the
machine it was trained on.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

KINDS = ("unconditional", "class", "text", "latent", "autoencoder")
N = 4
LABELS = [0, 1, 2, 3]
PROMPTS = ["a handwritten three", "the digit 7", "a handwritten digit zero", "the number five, handwritten"]


def with_autoencoder(run_dir: Path, autoencoder_ckpt: str | Path, into: Path) -> Path:
    """A copy of ``run_dir`` in ``into`` whose config.yaml names ``autoencoder_ckpt`` as module.autoencoder_ckpt
    (the line is rewritten as text, so nothing else in the file changes)."""
    copy = into / run_dir.name
    shutil.copytree(run_dir, copy)
    config = copy / "config.yaml"
    lines = config.read_text().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.lstrip().startswith("autoencoder_ckpt:")]
    if len(hits) != 1:
        raise SystemExit(f"{config}: expected one autoencoder_ckpt line, found {len(hits)}")
    i = hits[0]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = f"{indent}autoencoder_ckpt: {Path(autoencoder_ckpt).resolve()}\n"
    config.write_text("".join(lines))
    return copy


def digits(n: int = N) -> torch.Tensor:
    """The first n of scikit-learn's 8x8 digits, (n, 1, 8, 8) float32 in [-1, 1]."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1)
    return images / 16.0 * 2.0 - 1.0


def seed0() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@torch.no_grad()
def draw(kind: str, run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of expected.npz for the run in ``run_dir`` (loaded from checkpoints/last.ckpt)."""
    from ddpm.diffusion.samplers import DDIMSampler

    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    if kind == "autoencoder":
        from ddpm.runs.autoencoder_load import load_autoencoder

        autoencoder, info = load_autoencoder(ckpt)
        x = digits()
        latents = torch.randn((N, *info["latent_shape"]), generator=seed0())
        posterior = autoencoder.encode(x)
        return {
            "images": x.numpy(),
            "posterior_mean": posterior.mean.numpy(),
            # as evaluate.py scores an autoencoder: the decoded posterior mean, clamped
            "reconstructions": autoencoder(x, sample_posterior=False)[0].clamp(-1, 1).numpy(),
            "latents": latents.numpy(),
            "decoded": autoencoder.decode(latents).numpy(),
        }

    from ddpm.runs.load import load_run

    _, _, module = load_run(ckpt)

    def sample(cond=None, sampler="ddim5"):
        sampler = DDIMSampler(steps=5) if sampler == "ddim5" else None  # None: the run's own sampler
        return module.sample(N, seed0(), sampler=sampler, cond=cond).numpy()

    out = {"uncond": sample(), "own_sampler": sample(sampler=None)}  # unconditional: null class / empty prompt
    if kind == "class":
        out["cond"] = sample(torch.tensor(LABELS))  # at the run's guidance scale
    elif kind == "text":
        out["cond"] = sample(list(PROMPTS))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--autoencoder", help="latent runs: the autoencoder checkpoint to load it with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir
        if args.autoencoder:
            run_dir = with_autoencoder(run_dir, args.autoencoder, Path(tmp))
        arrays = draw(args.kind, run_dir)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
