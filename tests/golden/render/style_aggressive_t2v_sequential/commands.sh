#!/usr/bin/env bash
# The commands kohyawan 0.1.0 would run for this plan, in order.
# Profile style, variant aggressive, task t2v-A14B, expert mode sequential.
# Run from anywhere: each command names its files by absolute path and runs inside the
# musubi-tuner checkout (set MUSUBI_TUNER_DIR).
set -euo pipefail
cd "${MUSUBI_TUNER_DIR:?set MUSUBI_TUNER_DIR to your musubi-tuner checkout}"

# 1. Cache latents (needs the VAE)
"${PYTHON:-python}" src/musubi_tuner/wan_cache_latents.py \
    --dataset_config <TMP>/out/dataset.toml \
    --vae <TMP>/models/wan_2.1_vae.safetensors

# 2. Cache text-encoder outputs (needs umT5-XXL)
"${PYTHON:-python}" src/musubi_tuner/wan_cache_text_encoder_outputs.py \
    --dataset_config <TMP>/out/dataset.toml \
    --t5 <TMP>/models/models_t5_umt5-xxl-enc-bf16.safetensors \
    --batch_size 16

# 3. Train the high-noise expert
"${PYTHON:-python}" -m accelerate.commands.launch \
    --num_cpu_threads_per_process 1 \
    --mixed_precision fp16 \
    src/musubi_tuner/wan_train_network.py \
    --config_file <TMP>/out/train_high.toml

# 4. Train the low-noise expert
"${PYTHON:-python}" -m accelerate.commands.launch \
    --num_cpu_threads_per_process 1 \
    --mixed_precision fp16 \
    src/musubi_tuner/wan_train_network.py \
    --config_file <TMP>/out/train_low.toml

