# One device call (about 6-9 minutes): the default fast path's warm-up on a fresh machine, without and
# with torch.compile artifacts (PyTorch Mega-Cache, `--compile-artifacts FILE`, as `vividhead infer` /
# `serve` take it). Per variant, two fresh processes, each with its own empty Inductor and Triton cache
# folders (what a fresh machine has): the first compiles everything and writes FILE, the second loads
# FILE first. benchmarks/inference.py --part warmup writes one JSON line per run (warmup_s, the
# artifacts' size and load time) to $OUT/warmup_artifacts.jsonl; FILE stays under $OUT.
#
# Usage (device tool, carry [".whl_serve"]; preparation in run_serve_load_gpu.sh's header):
#   bash benchmarks/run_warmup_artifacts_gpu.sh                 (VARIANTS="pro lite" by default)
#   VARIANTS=lite LIMIT=280 bash benchmarks/run_warmup_artifacts_gpu.sh
set -u
export PYTHONUNBUFFERED=1
WHEELS=.whl_serve source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for v in ${VARIANTS:-pro lite}; do
  for pass in write load; do
    export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_${v}_${pass} TRITON_CACHE_DIR=/tmp/triton_${v}_${pass}
    rm -rf "$TORCHINDUCTOR_CACHE_DIR" "$TRITON_CACHE_DIR"
    timeout -k 10 "${LIMIT:-250}" python3 benchmarks/inference.py --suite single --part warmup --variants "$v" \
      --compile-artifacts "$OUT/$v.compile_artifacts" --out "$OUT/warmup_artifacts_${v}_${pass}.json" \
      >> "$OUT/warmup_artifacts.jsonl" 2>> "$OUT/warmup_artifacts.log"
    echo "$v $pass: rc $?"; tail -1 "$OUT/warmup_artifacts.jsonl" | cut -c1-400
  done
done
ls -la "$OUT"
