"""Training with Lightning: the LightningModules (diffusion, latent diffusion, autoencoder) and their parts (EMA,
speed switches, FLOP accounting, ...), the callbacks (one per file), checkpoints (``checkpoints``) and the logging
plumbing (``logs``)."""
