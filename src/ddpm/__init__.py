"""ddpm: denoising diffusion models with PyTorch Lightning and Hydra (see README.md, "Architecture")."""
