# Device calls on a 1 x H200 machine (each < 10 min): issue 17's default fast path.
#   tests     GPU tests of what changed (FP8 layer, one-pass Wan VAE, optimized tiny Pro session;
#             `python3 -P`: the repo root's vividhead/ folder must not shadow /tmp/pkg);
#   pipeline  Pro streaming pipeline in the default (fast) path with the stock baseline in the same
#             process, the eager path (--no-fast-path) and FP8 GEMMs, with frame drift between them;
#   warmup    a fresh process timing `vividhead serve`'s warm-up (compile caches as left by the steps
#             before: run after `pipeline` it is the restart figure);
#   lite_warmup  Lite's warm-up in two fresh processes: cold caches, then cached.
# Prepare (development machine): the wheels in .whl/ as for benchmarks/run_eval_gpu.sh (diffusers,
# av, soundfile, webdataset, pytest-timeout, ...).
# Usage (device tool, kind nvidia-h200, carry [".whl"]):
#   bash benchmarks/run_inference_fast_gpu.sh                           # tests pipeline warmup
#   STEPS="tests lite_warmup" bash benchmarks/run_inference_fast_gpu.sh
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
STEPS=${STEPS:-tests pipeline warmup}
source benchmarks/device_env.sh
mkdir -p ../shared/fixtures/media/video  # tests/conftest.py checks for the fixtures; these tests use none
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
B=benchmarks/inference.py
V=${VARIANTS:-pro}
left() { local l=$(( T0 + 570 - $(date +%s) )); [ $l -gt $1 ] && l=$1; echo $l; }

for step in $STEPS; do case $step in
tests)
  timeout -k 5 $(left 150) python3 -P -m pytest -q -m gpu -p no:cacheprovider tests/inference/test_fp8.py \
    tests/inference/test_gpu.py -k "fp8 or accelerated_wan or (optimized_fast_start and tiny-pro)" > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests: rc $? after $(( $(date +%s) - T0 )) s"; grep -E "passed|failed|Error|error" "$OUT/gpu_tests.log" | tail -8;;
pipeline)
  timeout -k 5 $(left 330) python3 $B --suite single --part pipeline --variants $V --also-eager --also-fp8 \
    --out "$OUT/pipeline.json" > "$OUT/pipeline.log" 2>&1
  echo "pipeline: rc $? after $(( $(date +%s) - T0 )) s"; grep '^{' "$OUT/pipeline.log"; grep -E "Error|error" "$OUT/pipeline.log" | tail -5;;
warmup)
  timeout -k 5 $(left 90) python3 $B --suite single --part warmup --variants $V > "$OUT/warmup.log" 2>&1
  echo "warm-up: rc $? after $(( $(date +%s) - T0 )) s"; grep '^{' "$OUT/warmup.log"; grep -E "Error|error" "$OUT/warmup.log" | tail -3;;
lite_warmup)
  for run in cold cached; do
    timeout -k 5 $(left 240) python3 $B --suite single --part warmup --variants lite > "$OUT/lite_warmup_$run.log" 2>&1
    echo "lite warm-up ($run): rc $? after $(( $(date +%s) - T0 )) s"; grep '^{' "$OUT/lite_warmup_$run.log" | tail -1
    grep -E "Error|error" "$OUT/lite_warmup_$run.log" | tail -3
  done;;
esac; done
