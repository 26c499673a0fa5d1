"""The autoencoder of latent diffusion, as plain PyTorch (no Lightning): its objective (``loss``) and the
latents it gives the diffusion model (``latents``: posterior moments, the scale factor, a cache)."""
