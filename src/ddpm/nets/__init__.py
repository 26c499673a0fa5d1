"""Denoising networks ``net(x_t, t) -> output of x_t's shape``: the DDPM U-Net, a point MLP, shared embeddings.

They know nothing of noise schedules.
"""
