"""What a model is conditioned on, as one object: nothing, class labels, or text prompts.

    conditioning = ClassConditioning(num_classes=10, p_uncond=0.1)   # conf/conditioning/class.yaml
    conditioning.net_args()                             -> {"num_classes": 10}: what the net is built with
    conditioning.training_condition(batch, generator)   -> cond (B,) for the loss, dropped to null at rate p_uncond
    conditioning.sampling_condition(cond, device)       -> checked labels / encoded prompts for ``module.sample``
    conditioning.guidance_args(use_ema, device)         -> ``ClassifierFreeGuidance``'s num_classes / null_condition
    conditioning.balanced(n, class_prompts)             -> (cond, labels (n,)): n samples cycling over the classes

The three kinds (``Unconditional``, ``ClassConditioning``, ``TextConditioning``) answer the same calls, so
the module, the grid, FID and classifier callbacks and ``evaluate.py`` never ask which kind they hold.
Each owns its null condition (the null class K; the empty prompt "", Stable Diffusion's convention) and
its dropout (as DiT's ``LabelEmbedder.token_drop`` owns the label dropout), its trainable parameters (a
jointly trained text encoder and that encoder's EMA) and its checkpoint state (the empty prompt of
precomputed embeddings).

A text model's encoder (``ddpm.nets.text_encoders``) is ``forward(list[str]) -> (embeddings (B, L, D),
mask (B, L))``. A trainable one (``text_encoder/small.yaml``) is trained jointly with the network and
sampled through an EMA of its own; a frozen one (``text_encoder/clip.yaml``) stays out of the optimizer
and the checkpoint. A model trained on precomputed embeddings (an ``.npz`` beside the data) may have no
encoder: its empty prompt comes from the data and is stored in the checkpoint.
"""

from ddpm.training.conditioning.base import (ClassConditioning, Conditioning, Unconditional, check_prompts,
                                             class_prompts_of, is_prompts)
from ddpm.training.conditioning.text import TextConditioning, conditioning_of

__all__ = ["ClassConditioning", "Conditioning", "TextConditioning", "Unconditional", "check_prompts", "class_prompts_of",
           "conditioning_of", "is_prompts"]
