#!/bin/bash
# The five runs of tests/data/kinds, trained by the code of commit bb9fe6c on the CPU
# (200 steps each, 50 for the autoencoder).
# usage: cd <checkout of bb9fe6c> && bash make_runs.sh RUNS [DEST]
#   RUNS: where the runs are written (a run whose directory exists is skipped);
#   DEST: where to copy what loading reads (DEST/<kind>/config.yaml, DEST/<kind>/checkpoints/last.ckpt),
#         the checkpoints' optimizer states dropped (load_run and load_autoencoder read only state_dict).
set -e
mkdir -p "$1"
OUT=$(realpath "$1")
run() { local kind=$1; shift; [ -e "$OUT/$kind" ] || python train.py "$@" hydra.run.dir="$OUT/$kind"; }
DIFF="schedule.num_timesteps=20 data.batch_size=16 module.warmup_steps=2 trainer.accelerator=cpu trainer.log_every_n_steps=2
 callbacks.progress_bar.refresh_rate=0 callbacks.sample_grid=null logger=none trainer.max_steps=200 callbacks.checkpoint.every_n_train_steps=0"
UNET="model=unet_tiny model.channel_mult=[1] model.attn_resolutions=[]"
run unconditional $UNET $DIFF
run class experiment=digits_dit sampler.steps=5 model.hidden_size=32 model.depth=2 model.num_heads=2 model.mlp_ratio=1.0 $DIFF
run text experiment=digits_text sampler.steps=5 model=unet_tiny model.channel_mult=[1] model.attn_resolutions=[8] $DIFF \
  text_encoder.dim=16 text_encoder.depth=1 text_encoder.max_length=32 text_encoder.tokenizer=chars
run autoencoder experiment=autoencoder_mnist data=digits data.batch_size=16 module.warmup_steps=2 trainer.max_steps=50 \
  trainer.log_every_n_steps=2 logger=none callbacks.progress_bar.refresh_rate=0 callbacks.checkpoint.every_n_train_steps=0 \
  callbacks.reconstructions=null model.base_channels=8 model.norm_groups=4 model.channel_mult=[1,2] model.attention=false
run latent experiment=ldm_mnist sampler.steps=5 data=digits module.autoencoder_ckpt="$OUT/autoencoder/checkpoints/last.ckpt" module.scale_images=256 \
  model.image_size=null model.in_channels=null model.channel_mult=[1] model.num_res_blocks=1 model.attn_resolutions=[] $DIFF

[ -n "$2" ] || exit 0
for kind in unconditional class text autoencoder latent; do
  mkdir -p "$2/$kind/checkpoints"
  cp "$OUT/$kind/config.yaml" "$2/$kind/config.yaml"
  python - "$OUT/$kind/checkpoints/last.ckpt" "$2/$kind/checkpoints/last.ckpt" <<'PY'
import sys, torch
checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
checkpoint["optimizer_states"] = []  # Adam's moments: two more copies of the weights, never read by loading
torch.save(checkpoint, sys.argv[2])
PY
done
