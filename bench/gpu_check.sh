#!/usr/bin/env bash
# Kiln's GPU checks, end to end, on a CUDA machine where the project is not installed (an offline GPU
# machine with PyTorch, onnxruntime-gpu and the project's dependencies on PYTHONPATH, as
# ../shared/gpu/prepare.sh prepares them; or a `make setup GPU=1` .venv, with PYTHON=.venv/bin/python).
#
#   bench/gpu_check.sh WORKDIR [STAGE ...]     stages: train export threads bench plain decode demo
#                                              (default: all)
#
# train   the classifier on CUDA with AMP; the demo Transformer on CUDA in fp32 and with bf16 AMP (same
#         recipe and epochs, so their test BLEU compare), all three at once
# export  the checkpoints for the GPU (WORKDIR/repo-gpu: each bucket a CUDA graph, the default) and for
#         the CPU (WORKDIR/repo-cpu, fp32)
# threads `python -m bench.gpu_graph_probe` on the GPU export's classifier: its buckets' CUDA graphs
#         replayed on the loading thread and on another, and two captures overlapping beside other
#         traffic, every run bit for bit against a plain session (WORKDIR/threads.json)
# bench   `python -m bench --profile gpu`: the CUDA engines, and the gateway on the GPU against the same
#         gateway on this machine's CPU (WORKDIR/bench/report.md)
# plain   the same GPU export with --no-cuda-graphs (WORKDIR/repo-gpu-plain: plain bucket sessions), and
#         the bench's serving half on it, GPU side only (WORKDIR/bench-plain/report.md; the CPU side is
#         the bench stage's)
# decode  `python -m bench.gpu_decode_probe`: the decoder step's variants on CUDA (numpy feeds, resident
#         inputs, fixed shapes as a CUDA graph), then held-out sentences through the decode engine with
#         the host batch and the device-resident one (plain and CUDA graphs), and through the gateway
#         (1 and 4 processes, 32 and 256 clients, each run with the gateway's CPU by thread) with
#         KILN_RESIDENT_DECODER=1 and without (WORKDIR/decode-*.json)
# demo    `python -m kiln.demo --gpu` on those checkpoints
#
# BENCH_ONLY=servers (or engines) runs one half of the bench stage; WORKERS="1 4" sets the gateway
# processes of each serving layout (default: 1, a quarter and half of the cores).
# Each stage logs to WORKDIR/<stage>.log; a failing stage is reported and the next ones still run.
# First `python -m bench.gpu_preflight` names every module missing on this machine and stops the run
# (SKIP_PREFLIGHT=1 runs anyway, e.g. `train` while onnxruntime-gpu is still on its way).
set -uo pipefail
W=${1:?usage: bench/gpu_check.sh WORKDIR [train|export|threads|bench|plain|decode|demo ...]}
shift
STAGES=${*:-train export threads bench plain decode demo}
PY=${PYTHON:-python3}
mkdir -p "$W"
export PYTHONUNBUFFERED=1
if [ "${SKIP_PREFLIGHT:-0}" != 1 ]; then
  "$PY" -m bench.gpu_preflight || exit 1
fi

train() {
  "$PY" -m training.classify --model resnet18 --device cuda --amp --output-dir "$W/ckpt" >"$W/train-resnet18.log" 2>&1 &
  local c=$!
  local recipe=(--model transformer --preset demo --device cuda --time-budget 10)
  "$PY" -m training.translate "${recipe[@]}" --output-dir "$W/ckpt" >"$W/train-transformer.log" 2>&1 &
  local t=$!
  "$PY" -m training.translate "${recipe[@]}" --amp bf16 --output-dir "$W/ckpt-amp" >"$W/train-transformer-amp.log" 2>&1 &
  local a=$!
  local rc=0
  wait $c || { echo "classifier training failed"; rc=1; }
  wait $t || { echo "transformer training failed"; rc=1; }
  wait $a || { echo "transformer AMP training failed"; rc=1; }
  "$PY" - "$W" <<'EOF'
import sys
from pathlib import Path

from training.checkpoint import load_checkpoint

for path in sorted(p for p in Path(sys.argv[1]).glob("ckpt*/*.pt") if not p.name.endswith(".resume.pt")):
    metrics = load_checkpoint(path).get("metrics", {})
    keys = ("device", "train_time_s", "steps", "best_epoch", "test_bleu", "test_exact_match", "val_accuracy")
    print(path, {k: metrics[k] for k in keys if k in metrics})
EOF
  return $rc
}

export_() {
  "$PY" -m export "$W/ckpt" --repository "$W/repo-gpu" --device gpu >"$W/export-gpu.log" 2>&1 &
  local g=$!
  "$PY" -m export "$W/ckpt" --repository "$W/repo-cpu" --precisions fp32 >"$W/export-cpu.log" 2>&1 &
  local c=$!
  local rc=0
  wait $g || { echo "GPU export failed"; tail -20 "$W/export-gpu.log"; rc=1; }
  wait $c || { echo "CPU export failed"; tail -20 "$W/export-cpu.log"; rc=1; }
  return $rc
}

threads() {
  "$PY" -m bench.gpu_graph_probe "$W/repo-gpu/resnet18/1/model.onnx" --output "$W/threads.json"
}

bench() {
  "$PY" -m bench --profile gpu ${BENCH_ONLY:+--only $BENCH_ONLY} ${WORKERS:+--serving-workers $WORKERS} \
    --repository "$W/repo-gpu" --cpu-repository "$W/repo-cpu" --checkpoints "$W/ckpt" --output "$W/bench"
}

plain() {
  "$PY" -m export "$W/ckpt" --repository "$W/repo-gpu-plain" --device gpu --no-cuda-graphs &&
    "$PY" -m bench --profile gpu --only servers --serving-devices gpu ${WORKERS:+--serving-workers $WORKERS} \
      --repository "$W/repo-gpu-plain" --checkpoints "$W/ckpt" --output "$W/bench-plain"
}

decode() {
  "$PY" -m bench.gpu_decode_probe "$W/repo-gpu/transformer_decoder/1/model.onnx" --profile \
    --output "$W/decode-step.json" &&
    "$PY" -m bench.gpu_decode_probe --translate "$W/repo-gpu" --checkpoints "$W/ckpt" \
      --gateway-workers 1,4 --output "$W/decode-engine.json"
}

demo() {
  "$PY" -m kiln.demo --gpu --checkpoints "$W/ckpt" --repository "$W/repo-gpu"
}

for stage in $STAGES; do
  fn=$stage
  [ "$stage" = export ] && fn=export_
  start=$(date +%s)
  echo "== $stage: started $(date +%T)"
  if $fn >"$W/$stage.log" 2>&1; then status=ok; else status="FAILED (rc $?)"; fi
  echo "== $stage: $status in $(($(date +%s) - start)) s (log: $W/$stage.log)"
  tail -n 25 "$W/$stage.log"
done
