"""The autoencoder of latent diffusion's first stage, as plain PyTorch: its objective (``loss``), no Lightning."""
