#!/usr/bin/env bash
# GPU check of h2gnet's inference (CUDA and TensorRT through ONNX Runtime), dense and adaptive, in <= 5 min
# on a GPU machine with this repository checked out and the project installed (`pip install -e ".[train]"`).
#
#   bash benchmarks/gpu_check.sh [CACHE]      # CACHE: the benchmark cache (default .bench)
#
# The trained models and the 80k x 60k phantom slide must already be in CACHE (made on any machine by
# `python benchmarks/adaptive_wsi.py --cache CACHE --train-only`; copy CACHE/study/runs/{mob,unet}/model.onnx
# and CACHE/phantom_80000x60000.{tiff,geojson} along), so that nothing is trained or rendered here.
# Installs onnxruntime-gpu (which replaces the CPU wheel's `onnxruntime` module in this environment),
# then runs benchmarks/adaptive_wsi.py once per device with both modes and prints one JSON line per device.
# Target (issue 15): <= 10 s end to end on the benchmark slide.
set -euo pipefail
CACHE="${1:-.bench}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
for f in "$CACHE/study/runs/mob/model.onnx" "$CACHE/study/runs/unet/model.onnx" "$CACHE/phantom_80000x60000.tiff" \
         "$CACHE/phantom_80000x60000.geojson"; do
  [ -e "$f" ] || { echo "error: $f: missing (run benchmarks/adaptive_wsi.py --train-only first)" >&2; exit 2; }
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 120 python3 -m pip install -q onnxruntime-gpu
python3 - <<'PY'
import onnxruntime as ort
print("ONNX Runtime", ort.__version__, "providers:", ort.get_available_providers())
PY
for device in cuda tensorrt; do
  # TensorRT builds its engines on the first run (cached by ONNX Runtime only when asked); repeat 2
  # keeps the check within 5 minutes and shows the second run's time as well
  timeout 130 python3 benchmarks/adaptive_wsi.py --cache "$CACHE" --device "$device" --repeat 2 --no-fast \
      --batch-size 64 --readers 4 | tail -n 1 || echo "{\"device\": \"$device\", \"error\": \"failed or timed out\"}"
done
