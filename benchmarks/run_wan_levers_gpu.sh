# One device call on a 1 x H200 machine (< 10 min): cheap execution levers on the accelerated Wan VAE
# (issue 17, Pro >= 60 FPS), each in its own process, then the Pro streaming pipeline with the stock
# baseline, the default fast path and the default path with the Wan VAE decoder/encoder compiled, in
# one process. JSON lines land under $OUT after every figure (a cut-short run keeps what it measured).
#   levers    benchmarks/inference_kernels.py --parts wan_levers --wan-lever L: time, first-call
#             (compile) time, error against stock, kernel-class profile of one decode;
#   pipeline  benchmarks/inference.py --part pipeline --variants pro --also-vae-compile default.
# Usage (device tool, kind nvidia-h200, carry [".whl"]): bash benchmarks/run_wan_levers_gpu.sh
#   LEVERS="base compile_default" STEPS="levers" bash benchmarks/run_wan_levers_gpu.sh
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
STEPS=${STEPS:-levers pipeline late_levers}
LEVERS=${LEVERS:-base cudnn_limit0 compile_default}
LATE_LEVERS=${LATE_LEVERS:-compile_autotune}
BUDGET=${BUDGET:-560}
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
left() { local l=$(( T0 + BUDGET - $(date +%s) )); [ $l -gt $1 ] && l=$1; echo $l; }
lever() {
  local l=$(left $2)
  [ "$l" -lt 30 ] && { echo "lever $1: skipped (${l} s left)"; return; }
  timeout -k 5 "$l" python3 benchmarks/inference_kernels.py --parts wan_levers --wan-lever "$1" \
    --out "$OUT/lever_$1.json" > "$OUT/lever_$1.log" 2>&1
  echo "lever $1: rc $? after $(( $(date +%s) - T0 )) s"
  grep '^{' "$OUT/lever_$1.log" | grep -v '"top"' | cut -c1-700; grep -E "Error|error" "$OUT/lever_$1.log" | tail -3
}
for step in $STEPS; do case $step in
levers) for L in $LEVERS; do case $L in compile_*) lever $L 200;; *) lever $L 90;; esac; done;;
pipeline)
  timeout -k 5 $(left 330) python3 benchmarks/inference.py --suite single --part pipeline --variants pro \
    --also-vae-compile default --out "$OUT/pipeline.json" > "$OUT/pipeline.log" 2>&1
  echo "pipeline: rc $? after $(( $(date +%s) - T0 )) s"; grep '^{' "$OUT/pipeline.log" | cut -c1-900
  grep -E "Error|error" "$OUT/pipeline.log" | tail -5;;
late_levers) for L in $LATE_LEVERS; do lever $L 300; done;;
esac; done
