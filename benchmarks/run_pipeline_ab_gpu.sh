# One device call on 1 x H100 / H200 (< 10 min): `benchmarks/inference.py --suite single --part pipeline`
# (default fast path, stock parts in the same process) for the tree in $TREE (default: this checkout),
# so a refactor can be held against the commit before it on the same warm machine.
# Prepare (development machine; ignored paths carried with the call):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl_serve \
#       websockets==17.4 av==18.1.0 diffusers==0.42.1 soundfile==0.14.0 cffi pycparser
#   mkdir .base && git archive <base commit> | tar -x -C .base      # the baseline tree
# Usage (device tool, carry [".whl_serve", ".base"]):
#   TREE=.base NAME=base bash benchmarks/run_pipeline_ab_gpu.sh    # then, on the same machine:
#   NAME=head bash benchmarks/run_pipeline_ab_gpu.sh
# Writes $OUT/<NAME>.log with the JSON lines of inference.py (one per figure, as measured).
set -u
export PYTHONUNBUFFERED=1
ROOT=$PWD
cd "${TREE:-.}"
WHEELS=$ROOT/.whl_serve source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
timeout -k 5 ${LIMIT:-560} python3 benchmarks/inference.py --suite single --part pipeline \
  --variants ${VARIANTS:-pro lite} > "$OUT/${NAME:-run}.log" 2>&1
echo "${NAME:-run}: rc $?"
grep '^{' "$OUT/${NAME:-run}.log" | cut -c1-900
grep -E "Error|error" "$OUT/${NAME:-run}.log" | tail -5
