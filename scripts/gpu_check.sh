#!/usr/bin/env bash
# On a GPU machine: the smoke profile twice under dvc repro (byte identity) and a few hundred CIFAR-10-sized
# training steps of DDPM and flow matching in fp32 and bf16 (scripts/gpu_check.py says what it measures).
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/gpu_check.py "$@"
