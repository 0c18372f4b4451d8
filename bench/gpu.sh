#!/usr/bin/env bash
# The GPU benchmark, ready for a machine with a CUDA GPU (none is needed to read it):
# SD 1.5 at 512 px and SDXL at 1024 px, random-weight full-size checkpoints, a U-Net LoRA,
# it/s and peak VRAM (nvidia-smi) for our defaults and for sd-scripts' flags on the same card.
# Then calibrate against real runs, each memory lever alone and torch_compile (issue 28).
#
#   bench/gpu.sh                                    # ours only
#   bench/gpu.sh --sd-scripts DIR --sd-python PY    # and sd-scripts beside it (peer mode)
#
# Environment: PYTHON (default .venv/bin/python), PRECISION (default bf16; fp16 for cards
# before RTX 30xx), SD15_STEPS / SDXL_STEPS (default 40 / 20), ROUNDS (default 2).
# Each family writes bench/.cache/gpu-<family>.json and prints its table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PRECISION=${PRECISION:-bf16}
ROUNDS=${ROUNDS:-2}
mkdir -p bench/.cache
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

run() {  # family resolution steps [peer args...]
    local family=$1 resolution=$2 steps=$3
    shift 3
    "$PY" bench/full_size.py --device cuda --family "$family" --resolution "$resolution" \
        --steps "$steps" --warmup 5 --rounds "$ROUNDS" --precision "$PRECISION" --json "$@" \
        > "bench/.cache/gpu-$family.json"
    "$PY" -c "import json, sys; from bench.full_size import render_table; \
print(render_table(json.load(open(sys.argv[1]))))" "bench/.cache/gpu-$family.json"
}

run sd15 512 "${SD15_STEPS:-40}" "$@"
run sdxl 1024 "${SDXL_STEPS:-20}" "$@"

# Flux (issue 27): each memory lever's VRAM and s/step on a Flux-width transformer with
# 4 double + 8 single blocks (bf16): fp8_base, fp8 T5, gradient checkpointing, cached
# text-encoder outputs, blocks_to_swap 4 and cpu_offload_checkpointing.
"$PY" bench/flux_memory.py --device cuda --double 4 --single 8 --steps "${FLUX_STEPS:-8}" \
    --json > bench/.cache/gpu-flux.json
"$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); \
[print(f\"{x['name']:28s} VRAM {x['peak_vram_mb']} MiB  {x['median_s_per_step']:.2f} s/step\") \
for x in r['results']]" bench/.cache/gpu-flux.json

# Issue 28: calibrate's prediction against real runs of the same profile on this GPU (target:
# peak VRAM within 10 %, the run's own allocator peak from its run_finished event), each
# lever's VRAM and s/step alone, and torch_compile against eager (compile cost, break-even).
"$PY" bench/calibrate_levers.py --family sd15 --resolution 512 --precision "$PRECISION" \
    --steps "${CAL_STEPS:-12}" --each-lever
"$PY" bench/calibrate_levers.py --family sdxl --resolution 1024 --precision "$PRECISION" \
    --steps "${CAL_STEPS:-12}" --each-lever
"$PY" bench/compile_speed.py --family sd15 --resolution 512 --precision "$PRECISION"
"$PY" bench/compile_speed.py --family sdxl --resolution 1024 --precision "$PRECISION"
