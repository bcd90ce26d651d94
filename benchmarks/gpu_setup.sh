#!/usr/bin/env bash
# The wheels that the GPU machine lacks (it has Python 3.12 with CUDA builds of
# JAX and PyTorch, no TensorFlow and no network), and their installation there.
#
#   bash benchmarks/gpu_setup.sh download   # here: fills gpu_wheels/ (about 43 MB, git-ignored)
#   bash benchmarks/gpu_setup.sh install    # there, before `python benchmarks/gpu_check.py`
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORM=(--python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# Installed with their dependencies, which the machine's own packages satisfy where they can.
WITH_DEPS=(keras kagglehub kagglesdk==0.1.28 regex safetensors matplotlib gguf filelock jinja2)
# Without: keras-hub's would pull TensorFlow Text, tokenizers' the Hugging Face Hub client.
WITHOUT_DEPS=(keras-hub tokenizers)
case "${1:-}" in
download)
    rm -rf gpu_wheels
    pip download -q -d gpu_wheels "${PLATFORM[@]}" "${WITH_DEPS[@]}"
    pip download -q -d gpu_wheels --no-deps "${PLATFORM[@]}" "${WITHOUT_DEPS[@]}"
    # The machine's JAX and PyTorch bring their own numpy and ml_dtypes.
    rm -f gpu_wheels/numpy-* gpu_wheels/ml_dtypes-*
    du -sh gpu_wheels
    ;;
install)
    pip install -q --no-index --find-links gpu_wheels --no-deps "${WITHOUT_DEPS[@]}"
    pip install -q --no-index --find-links gpu_wheels "${WITH_DEPS[@]}"
    ;;
*)
    echo "usage: bash benchmarks/gpu_setup.sh download|install" >&2
    exit 2
    ;;
esac
