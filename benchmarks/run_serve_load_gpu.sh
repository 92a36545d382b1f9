# One device call on a 1 x H200 machine (about 8 minutes, 480 s of runs): the concurrency curve of `vividhead serve`
# with real WebSocket clients (benchmarks/serve_load.py), released Lite and Pro shapes at random weights.
# Writes <run>.jsonl (one line per number of streams, as soon as measured), <run>.json and serve_load.log under $OUT.
#
# Prepare on the development machine (ignored paths, carried with the call):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl_serve \
#       websockets==17.4 av==18.1.0 diffusers==0.42.1 soundfile==0.14.0 cffi pycparser
#   mkdir -p .carry_serve && cp ../shared/fixtures/media/audio/speech_en_60s_16k.wav \
#       ../shared/fixtures/media/image/face_frontal_people0.png .carry_serve/
# Usage (device tool, kind nvidia-h200, carry [".whl_serve", ".carry_serve"]): bash benchmarks/run_serve_load_gpu.sh
#   STEPS="lite_fast pro_fast" LITE_LIMIT=460 PRO_LIMIT=300 bash benchmarks/run_serve_load_gpu.sh  (one run after
#   the other inside BUDGET=570 s; each limit is cut to what is left); CLIENT_S=20: seconds of speech per client
#   (default 6); LITE_EXTRA / LITE_EXTRA2: serve_load arguments appended to lite_fast and lite_buckets / lite_fast2
#   (e.g. "--vae-batch 8", "--fp8"; a later --vae-batch wins)
set -u
export PYTHONUNBUFFERED=1
WHEELS=.whl_serve source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
MEDIA="--audio .carry_serve/speech_en_60s_16k.wav --image .carry_serve/face_frontal_people0.png --seconds ${CLIENT_S:-6} --timeout-s 30"
MEDIA="$MEDIA --client-process"  # clients in their own process: the server's event loop carries only its own work
MEDIA="$MEDIA --encode-workers ${ENCODE_WORKERS:-8}"  # MP4 encoding processes (0: threads; 8: serve's default here)
# what the MP4 encoder gets: face-like frames (image, default since 2026-12-06 12:50 UTC) or the random-weight
# model's noise (model: ~3.2 MB and ~6x the encode CPU of a face per Lite chunk; every earlier run)
MEDIA="$MEDIA --encode-content ${ENCODE_CONTENT:-image}"

run() {  # name, time limit (s), serve_load arguments...
  local name=$1 limit=$2; shift 2
  timeout -k 10 "$limit" python3 benchmarks/serve_load.py --device cuda $MEDIA --out "$OUT/$name.jsonl" "$@" \
    > "$OUT/$name.json" 2>> "$OUT/serve_load.log"
  echo "$name: rc $?"
  grep -v -E "^(W[0-9]|INFO|WARNING)" "$OUT/serve_load.log" | cut -c1-400 | tail -8
}
T0=$(date +%s)
left() { local l=$(( T0 + ${BUDGET:-570} - $(date +%s) )); [ $l -gt $1 ] && l=$1; echo $l; }
for step in ${STEPS:-lite_eager pro_fast lite_fast}; do case $step in
lite_eager)  # Lite eager (no compilation)
  run lite_eager $(left 80) --variant lite --warm-up 1 4 --streams 1 4 8 16;;
pro_fast)  # Pro, compiled DiT (CUDA graphs) + accelerated Wan VAE, DiT batches padded to 1 or 2
  run pro_fast $(left ${PRO_LIMIT:-160}) --variant pro --optimize --cuda-graphs --batch-buckets 1 2 --vae-batch 2 \
    --warm-up 1 2 --profile-round 2 --streams ${PRO_STREAMS:-1 2 3};;
lite_fast)  # Lite, compiled DiT replayed as CUDA graphs + compiled LTX VAE, DiT batches padded to 16
            # (a lone chunk: 1)
  run lite_fast $(left ${LITE_LIMIT:-240}) --variant lite --optimize --cuda-graphs --batch-buckets 16 --vae-batch 4 \
    --warm-up 1 16 --profile-round 16 --streams ${LITE_STREAMS:-8 16 20} ${LITE_EXTRA:-};;
lite_fast2)  # lite_fast again with LITE_EXTRA2 appended (a second configuration in the same call, e.g. --fp8)
  run lite_fast2 $(left ${LITE_LIMIT:-240}) --variant lite --optimize --cuda-graphs --batch-buckets 16 --vae-batch 4 \
    --warm-up 1 16 --profile-round 16 --streams ${LITE_STREAMS:-8 16 20} ${LITE_EXTRA2:-};;
lite_fast_threads)  # lite_fast again with the MP4 encodes in threads (after a lite_fast with ENCODE_WORKERS set:
                    # the A/B of the encoders in one call; the compile cache is warm by then)
  run lite_fast_threads $(left ${LITE_LIMIT:-240}) --variant lite --optimize --cuda-graphs --batch-buckets 16 \
    --vae-batch 4 --warm-up 1 16 --encode-workers 0 --streams ${THREADS_STREAMS:-16};;
lite_buckets)  # Lite as lite_fast, DiT and LTX coders compiled once for any batch (--dynamic-batch), rounds
               # padded to the next of 1 / 2 / 4 / 8 / 16: a round's cost is close to linear in its rows, so
               # back-to-back rounds stay short (a CPU replay of that cost: latency p95 1.16 s against
               # 1.96 s with 16 alone)
  run lite_buckets $(left ${LITE_LIMIT:-240}) --variant lite --optimize --cuda-graphs --dynamic-batch \
    --batch-buckets 1 2 4 8 16 --vae-batch 4 --warm-up 1 2 4 8 16 --profile-round 16 --streams ${LITE_STREAMS:-8 16 20} ${LITE_EXTRA:-};;
lite_exact)  # Lite, compiled once for any batch (--dynamic-batch), FP8 DiT GEMMs, no padding: a round runs
             # exactly the chunks waiting (every size 1-16 warmed up, so each records its CUDA graphs
             # before serving). CPU replay with the H100's round costs (docs/benchmarks.md): 16 streams
             # 11-14 real time, p95 0.47-0.63 s, against 8 with rounds padded to 16
  run lite_exact $(left ${LITE_LIMIT:-240}) --variant lite --optimize --cuda-graphs --dynamic-batch --fp8 \
    --vae-batch 8 --warm-up $(seq 16 -1 1) --profile-round 16 --streams ${LITE_STREAMS:-12 16 17} ${LITE_EXTRA:-};;
lite_exact_admit)  # lite_exact with admission as serve has it by default: the sessions past the estimate are
                   # refused with the reason, the admitted ones should stay real time (after lite_exact in the
                   # same call, the compile cache is warm)
  run lite_exact_admit $(left ${LITE_LIMIT:-240}) --variant lite --optimize --cuda-graphs --dynamic-batch --fp8 \
    --vae-batch 8 --warm-up $(seq 16 -1 1) --admission --streams ${ADMIT_STREAMS:-20} ${LITE_EXTRA:-};;
lite_admit_artifacts)  # lite_exact_admit twice, each in a fresh process with its own empty Inductor and Triton
                       # cache folders (what a fresh machine has): the first compiles cold and writes the
                       # compile artifacts (PyTorch Mega-Cache, as `serve --compile-artifacts`) and runs no
                       # clients (WRITE_LIMIT s, default 380: the cold warm-up of 16 sizes took about 300-354 s
                       # on an H100), the second loads them first and runs the admission check under load
                       # (LITE_LIMIT s): serve's warm-up on a fresh machine with and without them
  for pass in write load; do
    export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_serve_$pass TRITON_CACHE_DIR=/tmp/triton_serve_$pass
    rm -rf "$TORCHINDUCTOR_CACHE_DIR" "$TRITON_CACHE_DIR"
    # LOAD_EXTRA: arguments of the load pass only (e.g. --warm-up-in-background: the port opens after
    # sizes 16 and 1, the clients arrive at once, the other sizes record when first served)
    if [ $pass = write ]; then limit=${WRITE_LIMIT:-380}; streams=""; extra="";
    else limit=${LITE_LIMIT:-240}; streams=${ADMIT_STREAMS:-20}; extra=${LOAD_EXTRA:-}; fi
    run lite_admit_$pass $(left $limit) --variant lite --optimize --cuda-graphs --dynamic-batch --fp8 \
      --vae-batch 8 --warm-up $(seq 16 -1 1) --admission --streams $streams \
      --compile-artifacts /tmp/lite_serve.compile_artifacts ${LITE_EXTRA:-} $extra
    ls -la /tmp/lite_serve.compile_artifacts
  done
  unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR;;
esac; done
