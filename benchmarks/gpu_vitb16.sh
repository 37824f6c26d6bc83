#!/bin/sh
# The ViT-B/16 CLIP train step on one NVIDIA GPU in bfloat16, with each attention core in turn
# (configs/bench_vitb16.py): OUT/gpu_vitb16_<attention>.{json,md}, and their log in OUT/log.txt.
# Usage: sh benchmarks/gpu_vitb16.sh OUT [attention ...]   (default: cudnn xla einsum)
out=${1:?usage: gpu_vitb16.sh OUT [attention ...]}
shift
mkdir -p "$out"
for attention in ${@:-cudnn xla einsum}; do
  echo "== attention: $attention" | tee -a "$out/log.txt"
  PYTHONUNBUFFERED=1 timeout 175 python3 -m vlmjax.bench --config "configs/bench_vitb16.py:$attention" \
    --out "$out" --name "gpu_vitb16_$attention" --steps 10 --repeats 5 >>"$out/log.txt" 2>&1
  echo "exit $?" | tee -a "$out/log.txt"
  grep -E "MFU|steps/s|compile" "$out/gpu_vitb16_$attention.md" 2>/dev/null
done
