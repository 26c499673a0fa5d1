"""Sample a trained DDPM from its EMA weights and score the samples (FID, KID, IS, NLL), offline:
compose ``conf/evaluate.yaml``, then ``ddpm.runs.evaluate.evaluate(cfg)``.

    python evaluate.py ckpt_path=outputs/train/RUN/checkpoints/last.ckpt sampler=ddim sampler.steps=50 num_samples=50000
    python evaluate.py ckpt_path=RUN/checkpoints/last.ckpt metrics=[fid,kid,is,nll] denoiser.variance=fixed_large
    python evaluate.py samples_path=samples.npz reference_path=reference.npz   # samples made elsewhere
"""

import hydra
from omegaconf import DictConfig

from ddpm.errors import report_config_errors
from ddpm.runs.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@report_config_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
