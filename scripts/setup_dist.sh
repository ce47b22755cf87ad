#!/usr/bin/env bash
# `make setup`, distributed part: what build.rs needs to compile flowzoo's c10d shims.
#  1. Gloo's headers (Debian/Ubuntu: libgloo-dev): libtorch carries Gloo but the wheel ships
#     none of its headers, and c10d's ProcessGroupGloo.hpp includes them. Installed with
#     apt-get when missing, on Debian/Ubuntu, as root.
#  2. For the NCCL backend, when the torch wheel has CUDA: the CUDA headers the runtime wheel
#     lacks (crt/, nv/target), from the nvidia-cuda-crt and nvidia-cuda-cccl wheels matching
#     the installed CUDA runtime.
# Never fails the setup: without these flowzoo builds and works, without distributed
# training (or without NCCL), and says so.
set -u
PYTHON=${PYTHON:-python3}

note() { echo "== setup (distributed): $*"; }

gloo_found() {
  for root in "${GLOO_INCLUDE_DIR:-}" /usr/include /usr/local/include; do
    [ -n "$root" ] && [ -f "$root/gloo/algorithm.h" ] && return 0
  done
  return 1
}

if ! gloo_found; then
  if [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    note "installing libgloo-dev (Gloo's headers, for distributed training)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q libgloo-dev >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libgloo-dev >/dev/null 2>&1; } \
      || note "apt-get could not install libgloo-dev; flowzoo will build without distributed training"
  elif [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    note "Gloo's headers are missing; flowzoo will build without distributed training. To get it: sudo apt-get install libgloo-dev, then make build"
  else
    note "Gloo's headers (gloo/algorithm.h) are missing; flowzoo will build without distributed training. Install Gloo's headers (Debian/Ubuntu: libgloo-dev) or set GLOO_INCLUDE_DIR, then make build"
  fi
fi

# CUDA headers for the NCCL backend: only where the wheel has CUDA and lacks them.
torch_dir=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) || exit 0
[ -f "$torch_dir/lib/libtorch_cuda.so" ] || exit 0
cuda_inc=$(ls -d "$torch_dir"/../nvidia/cu*/include 2>/dev/null | head -n 1)
[ -n "$cuda_inc" ] && [ -f "$cuda_inc/cuda_runtime_api.h" ] || exit 0
if [ -f "$cuda_inc/crt/host_config.h" ] && [ -e "$cuda_inc/nv/target" ]; then
  exit 0
fi
runtime=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("nvidia-cuda-runtime"))' 2>/dev/null) || {
  note "no nvidia-cuda-runtime package found; flowzoo will build without the NCCL backend"
  exit 0
}
series=$(echo "$runtime" | cut -d. -f1,2)
note "installing CUDA $series headers for the NCCL backend (nvidia-cuda-crt, nvidia-cuda-cccl)"
"$PYTHON" -m pip install --quiet --no-deps "nvidia-cuda-crt==$series.*" "nvidia-cuda-cccl==$series.*" \
  || note "pip could not install them; flowzoo will build without the NCCL backend (Gloo only)"
exit 0
