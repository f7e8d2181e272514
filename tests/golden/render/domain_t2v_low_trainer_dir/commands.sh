#!/usr/bin/env bash
# The commands kohyawan 0.1.0 would run for this plan, in order.
# Profile domain, task t2v-A14B, expert mode low.
# Run from anywhere: each command names its files by absolute path and runs inside the
# musubi-tuner checkout (/opt/musubi-tuner).
set -euo pipefail
cd /opt/musubi-tuner

# 1. Cache latents (needs the VAE)
"${PYTHON:-python}" /opt/musubi-tuner/src/musubi_tuner/wan_cache_latents.py \
    --dataset_config <TMP>/out/dataset.toml \
    --vae <TMP>/models/wan_2.1_vae.safetensors

# 2. Cache text-encoder outputs (needs umT5-XXL)
"${PYTHON:-python}" /opt/musubi-tuner/src/musubi_tuner/wan_cache_text_encoder_outputs.py \
    --dataset_config <TMP>/out/dataset.toml \
    --t5 <TMP>/models/models_t5_umt5-xxl-enc-bf16.safetensors \
    --batch_size 16

# 4. Train the low-noise expert
"${PYTHON:-python}" -m accelerate.commands.launch \
    --num_cpu_threads_per_process 1 \
    --mixed_precision fp16 \
    /opt/musubi-tuner/src/musubi_tuner/wan_train_network.py \
    --config_file <TMP>/out/train_low.toml

