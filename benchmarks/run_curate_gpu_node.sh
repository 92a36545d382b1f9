#!/usr/bin/env bash
# A whole `vividhead curate` run on one GPU node (the device tool's machine: one GPU, 16 cores) with
# examples/curate_gpu.yaml, over the fixture videos repeated REPEAT times. Measures video-hours per
# node-hour, the GPU's busy share, the CPU seconds per stage and the clips kept.
#
# Prepare on the development machine: bash benchmarks/stage_curate_gpu_wheels.sh. It writes the parts
# .carry_cur/p1 .. .carry_cur/pN (wheels, static ffmpeg/ffprobe, fixture videos and weights; about
# 236 MiB in 5 parts) and prints the device calls: calls 1 .. N-1 (carry [".carry_cur/pK"]) only
# copy their part to /tmp/carry on the machine (it stays warm 30 s after a call, so fire them back to
# back); call N (carry [".carry_cur/pN"], timeout_s 600) is this script, which:
#   1. copies its own part, checks that every part is in /tmp/carry (else writes an error line and
#      exits 3: the machine was not kept between calls, redo them all), joins them, checks the SHA-256;
#   2. installs the wheels into /tmp/site and lays out the package in /tmp/pkg (as device_env.sh);
#      uses the image's ffmpeg/ffprobe if they have libx264, else the carried static ones, and the
#      carried libEGL/libGLESv2 (MediaPipe links them) where ldconfig does not know the image's;
#   3. links the fixture videos REPEAT times into one input folder (dedup is off in the run's config:
#      the copies are byte-identical) and writes the run's config: CONFIG (default
#      examples/curate_gpu.yaml) plus every `enabled: false` of OVERLAY (examples/curate_offline.yaml:
#      the stages whose weights are not in the fixtures) and shards of SAMPLES_PER_SHARD clips;
#   4. starts a local Ray head (`ray start --head`, all cores and GPUs; RAY_HEAD=0: the in-process Ray
#      that `vividhead curate` starts by itself), samples `nvidia-smi` once a second, and runs
#      `python3 -m vividhead curate INPUTS --output ... --config ...` under `timeout`, so that it ends
#      inside BUDGET seconds (default 540) counted from the script's start;
#   5. appends JSON lines to $OUT/curate_gpu.jsonl: the environment, a progress line every INTERVAL
#      seconds while it runs (from the manifest parts written so far: a run stopped at its limit
#      still reports), and a final line (benchmarks/curate_gpu_node.py has the fields).
# $OUT gets: curate_gpu.jsonl, curate.log, gpu.csv, stats.json, manifest.parquet, config.yaml, env.txt.
#
# Usage (device tool, last call): bash benchmarks/run_curate_gpu_node.sh
#   REPEAT=40 BUDGET=540 INTERVAL=20 VIDEOS='*.mp4' bash benchmarks/run_curate_gpu_node.sh
#   bash benchmarks/run_curate_gpu_node.sh --probe   (the image's facts only: python, packages, ffmpeg)
# On a CPU-only machine (checks everything but the GPU; no Ray head by default there; PYTHON is a
# Python 3.12 that stands in for the image: torch, numpy, opencv-python-headless, onnxruntime, scipy,
# scikit-learn, numba, pandas, pyarrow, matplotlib, pyyaml, typer, rich, fsspec, huggingface-hub):
#   OUT=/tmp/o CARRY=/tmp/c RUN=/tmp/r SITE=/tmp/s PKG=/tmp/p PYTHON=/path/to/python3.12 \
#   CONFIG=examples/curate_offline.yaml REPEAT=2 VIDEOS='talk_retalking_face[12].mp4' \
#   FORCE_CARRIED_FFMPEG=1 FORCE_CARRIED_GL=1 bash benchmarks/run_curate_gpu_node.sh
set -u
export PYTHONUNBUFFERED=1
T_START=$(date +%s)
cd "$(dirname "$0")/.."
REPO=$PWD
BUDGET=${BUDGET:-540}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/curate_gpu_out}
CARRY=${CARRY:-/tmp/carry}
RUN=${RUN:-/tmp/cur}
SITE=${SITE:-/tmp/site}
PKG=${PKG:-/tmp/pkg}
CONFIG=${CONFIG:-examples/curate_gpu.yaml}
OVERLAY=${OVERLAY:-examples/curate_offline.yaml}
REPEAT=${REPEAT:-40}
VIDEOS=${VIDEOS:-*.mp4}
SAMPLES_PER_SHARD=${SAMPLES_PER_SHARD:-8}
INTERVAL=${INTERVAL:-20}
mkdir -p "$OUT" "$CARRY" "$RUN"
JSONL=$OUT/curate_gpu.jsonl
ENVTXT=$OUT/env.txt
NGPU=0
command -v nvidia-smi >/dev/null 2>&1 && NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
RAY_HEAD=${RAY_HEAD:-$([ "$NGPU" -gt 0 ] && echo 1 || echo 0)}

line() { echo "$1" >> "$JSONL"; echo "$1"; }
left() { echo $(( T_START + BUDGET - $(date +%s) )); }

facts() {
  echo "date: $(date -u +%FT%TZ)  host cores: $(nproc)  memory: $(free -g | awk '/Mem:/{print $2" GiB"}')"
  # whether the cores are hyperthread siblings: a stage's CPU-s per input-second rose 1.5x when the node was busy
  lscpu 2>/dev/null | grep -E "^(Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|CPU MHz|L3)" || true
  echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  for t in ffmpeg ffprobe xz; do echo "$t: $(command -v $t || echo none)"; done
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(numpy|protobuf|opencv|onnxruntime|onnx|scipy|scikit-learn|numba|llvmlite|pandas|pyarrow|torch|torchaudio|matplotlib|absl-py|flatbuffers|attrs|click|pyyaml|typer|rich|fsspec|huggingface|packaging|requests|msgpack|filelock|pillow|joblib|lazy.loader|typing.extensions) "
  df -h /tmp | tail -1
}
if [ "${1:-}" = "--probe" ]; then facts | tee "$OUT/probe.txt"; exit 0; fi
facts > "$ENVTXT" 2>&1

# 1. Join the parts.
for d in .carry_cur/p*/; do [ -d "$d" ] && cp -r "$d" "$CARRY/"; done
info=$(ls "$CARRY"/p*/bundle.info 2>/dev/null | head -1)
[ -n "$info" ] || { line '{"kind": "error", "error": "no bundle.info in '"$CARRY"': carry a .carry_cur part"}'; exit 3; }
# shellcheck disable=SC1090
source "$info"
missing=""
for i in $(seq 1 "$PARTS"); do
  [ -f "$CARRY/p$i/bundle.part$(printf %02d "$i")" ] || missing="$missing p$i"
done
if [ -n "$missing" ]; then
  line '{"kind": "error", "error": "parts missing in '"$CARRY"':'"$missing"'", "hint": "the machine went back between calls: run every call again, back to back"}'
  exit 3
fi
B=$RUN/bundle
if [ "$(cat "$B/.sha256" 2>/dev/null)" != "$SHA256" ]; then
  rm -rf "$B" "$RUN/bin" && mkdir -p "$B"
  cat $(for i in $(seq 1 "$PARTS"); do echo "$CARRY/p$i/bundle.part$(printf %02d "$i")"; done) > "$RUN/bundle.tar"
  got=$(sha256sum "$RUN/bundle.tar" | cut -d' ' -f1)
  if [ "$got" != "$SHA256" ]; then
    line '{"kind": "error", "error": "bundle SHA-256 '"$got"' is not '"$SHA256"'"}'
    exit 3
  fi
  tar xf "$RUN/bundle.tar" -C "$B" && rm -f "$RUN/bundle.tar" && echo "$SHA256" > "$B/.sha256"
fi

# 2. Install the wheels, lay out the package (as benchmarks/device_env.sh does).
T_INSTALL=$(date +%s)
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$B"/wheels/*.whl \
  > "$RUN/pip.log" 2>&1 || { tail -20 "$RUN/pip.log"; line '{"kind": "error", "error": "pip install of the carried wheels failed"}'; exit 4; }
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r vividhead "$PKG/vividhead"
for p in curation training inference evaluation datasets_card; do [ -d "$p" ] && ln -sfn "$REPO/$p" "$PKG/vividhead/$p"; done
export PYTHONPATH=$SITE:$PKG
export PATH=$SITE/bin:$PATH
mkdir -p "$RUN/bin"
has_x264() { "$1" -hide_banner -encoders 2>/dev/null | grep -q libx264; }
if [ "${FORCE_CARRIED_FFMPEG:-0}" != 1 ] && command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && has_x264 ffmpeg; then
  FFMPEG=$(command -v ffmpeg) FFPROBE=$(command -v ffprobe)
else
  for t in ffmpeg ffprobe; do
    [ -x "$RUN/bin/$t" ] || "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      "$B/bin/$t.xz" "$RUN/bin/$t"
    chmod +x "$RUN/bin/$t"
    want=$(sed -n 2p "$B/bin/$t.src" 2>/dev/null)  # the binary's SHA-256, as staged
    if [ -n "$want" ] && [ "$(sha256sum "$RUN/bin/$t" | cut -d' ' -f1)" != "$want" ]; then
      rm -f "$RUN/bin/$t"
      line '{"kind": "error", "error": "carried '"$t"' does not match the SHA-256 in bin/'"$t"'.src"}'
      exit 3
    fi
  done
  FFMPEG=$RUN/bin/ffmpeg FFPROBE=$RUN/bin/ffprobe
  export PATH=$RUN/bin:$PATH
fi
# MediaPipe's native library links libEGL.so.1 and libGLESv2.so.2: the carried ones where the image has none.
GL=system
if [ "${FORCE_CARRIED_GL:-0}" = 1 ] || ! ldconfig -p 2>/dev/null | grep -q "libEGL.so.1 " \
    || ! ldconfig -p 2>/dev/null | grep -q "libGLESv2.so.2 "; then
  GL=$B/gl
  export LD_LIBRARY_PATH=$GL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
echo "EGL/GLES libraries: $GL" >> "$ENVTXT"
export VIVIDHEAD_FFMPEG=$FFMPEG VIVIDHEAD_FFPROBE=$FFPROBE
export VIVIDHEAD_WEIGHTS_DIR=$B/fixtures/weights VIVIDHEAD_OFFLINE=1
{ echo "ffmpeg: $FFMPEG ($("$FFMPEG" -version | head -1))"; echo "ffprobe: $FFPROBE ($("$FFPROBE" -version | head -1))"; } >> "$ENVTXT"
env_json=$("$PY" - <<'EOF' 2>>"$ENVTXT"
import importlib.metadata as m, json, os, sys
import av, cv2, librosa, mediapipe, ray, rtmlib, scenedetect, silero_vad, soundfile, torch, webdataset  # noqa: F401
names = ["ray", "av", "mediapipe", "scenedetect", "rtmlib", "librosa", "webdataset", "silero-vad", "torch", "numpy",
         "opencv-python-headless", "onnxruntime", "protobuf"]
vers = {}
for n in names:
    try:
        vers[n] = m.version(n)
    except m.PackageNotFoundError:
        vers[n] = None
print(json.dumps({"kind": "env", "python": sys.version.split()[0], "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "cores": os.cpu_count(), "versions": vers}))
EOF
)
[ -n "$env_json" ] || { tail -20 "$ENVTXT"; line '{"kind": "error", "error": "import of the carried packages failed (env.txt)"}'; exit 4; }
line "$env_json"

# 3. Inputs and config.
IN=$RUN/inputs
rm -rf "$IN" "$RUN/out" && mkdir -p "$IN"
for r in $(seq -w 1 "$REPEAT"); do
  for f in "$B"/fixtures/video/$VIDEOS; do ln -f "$f" "$IN/r${r}_$(basename "$f")" 2>/dev/null || ln -sf "$f" "$IN/r${r}_$(basename "$f")"; done
done
# Seconds of each fixture video (ffprobe), for the video-hours of finished inputs (those that probe
# rejects have no duration in the manifest).
one_s=$("$PY" - "$FFPROBE" "$RUN/durations.json" "$B"/fixtures/video/$VIDEOS <<'EOF'
import json, subprocess, sys
ffprobe, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
args = ["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"]
d = {f.rsplit("/", 1)[-1]: float(subprocess.run([ffprobe, *args, f], capture_output=True, text=True).stdout.strip() or 0)
     for f in files}
json.dump(d, open(out, "w"), indent=1)
print(round(sum(d.values()), 3))
EOF
)
"$PY" benchmarks/curate_gpu_node.py config --base "$CONFIG" --overlay "$OVERLAY" --out "$RUN/config.yaml" \
  --samples-per-shard "$SAMPLES_PER_SHARD" > /dev/null || { line '{"kind": "error", "error": "config"}'; exit 4; }
cp "$RUN/config.yaml" "$OUT/config.yaml"
TOTAL_S=$("$PY" -c "print(round($one_s * $REPEAT, 1))")
line "{\"kind\": \"inputs\", \"videos\": $(ls "$B"/fixtures/video/$VIDEOS | wc -l), \"repeat\": $REPEAT, \"input_files\": $(ls "$IN" | wc -l), \"input_video_s\": $TOTAL_S, \"config\": \"$CONFIG + disables of $OVERLAY, dedup off\", \"install_s\": $(( $(date +%s) - T_INSTALL )), \"setup_s\": $(( $(date +%s) - T_START ))}"

# 4. GPU sampler, Ray, the run.
PIDS=()
if [ "$NGPU" -gt 0 ]; then
  ( while :; do
      u=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null \
          | awk -F, '{u+=$1; m+=$2; n++} END {if (n) printf "%.1f,%.0f", u/n, m}')
      [ -n "$u" ] && echo "$(date +%s.%N),$u"
      sleep 1
    done > "$OUT/gpu.csv" ) &
  PIDS+=($!)
fi
RAY_ARGS=()
RAY_TMP=$RUN/ray
stop_ray() {  # the head's processes, by the id of each process that names this run's temp dir
  [ "$RAY_HEAD" = 1 ] || return 0
  for pid in $(pgrep -f -- "$RAY_TMP"); do kill "$pid" 2>/dev/null; done
  sleep 3
  for pid in $(pgrep -f -- "$RAY_TMP"); do kill -9 "$pid" 2>/dev/null; done
}
if [ "$RAY_HEAD" = 1 ]; then
  PORT=${RAY_PORT:-6391}
  rm -rf "$RAY_TMP"
  # One node on a closed machine: no token (Ray 2.60's `ray start` turns token auth on by default and
  # a driver that joins it then needs the same token).
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
  if timeout 120 "$PY" -m ray.scripts.scripts start --head --node-ip-address=127.0.0.1 --port="$PORT" \
      --num-cpus="$(nproc)" --num-gpus="$NGPU" --include-dashboard=false --disable-usage-stats \
      --temp-dir="$RAY_TMP" > "$RUN/ray_start.log" 2>&1; then
    RAY_ARGS=(--ray-address "127.0.0.1:$PORT")
    line "{\"kind\": \"ray\", \"head\": \"127.0.0.1:$PORT\", \"num_cpus\": $(nproc), \"num_gpus\": $NGPU}"
  else  # the run goes on with the in-process Ray that `vividhead curate` starts by itself
    tail -20 "$RUN/ray_start.log"
    line '{"kind": "ray", "error": "ray start failed: in-process Ray instead (ray_start.log is in curate.log)"}'
    stop_ray
    RAY_HEAD=0
  fi
fi
T0=$(date +%s.%N)
"$PY" benchmarks/curate_gpu_node.py monitor --output "$RUN/out" --jsonl "$JSONL" --t0 "$T0" --gpu-csv "$OUT/gpu.csv" \
  --busy0-file "$RUN/busy0" --durations "$RUN/durations.json" --interval "$INTERVAL" > /dev/null 2>> "$OUT/curate.log" &
MONITOR=$!
LIMIT=$(( $(left) - 30 ))
[ "$LIMIT" -gt 30 ] || LIMIT=30
echo "vividhead curate: $(( REPEAT )) x $(ls "$B"/fixtures/video/$VIDEOS | wc -l) inputs, limit ${LIMIT} s"
# From $RUN: `python -m` puts the working directory first on sys.path, and the repository's own
# vividhead/ (without its parts) would shadow the laid-out package.
(cd "$RUN" && timeout -k 15 "$LIMIT" "$PY" -m vividhead curate "$IN" --output "$RUN/out" --config "$RUN/config.yaml" \
  -q "${RAY_ARGS[@]}" >> "$OUT/curate.log" 2>&1)
RC=$?
T1=$(date +%s.%N)
kill "$MONITOR" 2>/dev/null; wait "$MONITOR" 2>/dev/null
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
[ -f "$RUN/ray_start.log" ] && cat "$RUN/ray_start.log" >> "$OUT/curate.log"
stop_ray

# 5. The final line and the files.
"$PY" benchmarks/curate_gpu_node.py final --output "$RUN/out" --jsonl "$JSONL" --t0 "$T0" --t1 "$T1" \
  --gpu-csv "$OUT/gpu.csv" --busy0-file "$RUN/busy0" --durations "$RUN/durations.json" --rc "$RC" \
  --extra "{\"timed_out\": $([ "$RC" = 124 ] || [ "$RC" = 137 ] && echo true || echo false), \"inputs_total\": $(ls "$IN" | wc -l), \"input_video_s_total\": $TOTAL_S, \"limit_s\": $LIMIT, \"ffmpeg\": \"$FFMPEG\", \"gl\": \"$GL\", \"ray_head\": $RAY_HEAD}" \
  > /dev/null
tail -1 "$JSONL"
for f in stats.json manifest.parquet; do [ -f "$RUN/out/$f" ] && cp "$RUN/out/$f" "$OUT/"; done
if [ "$(wc -l < "$OUT/curate.log")" -gt 3000 ]; then tail -3000 "$OUT/curate.log" > "$RUN/log.tail" && mv "$RUN/log.tail" "$OUT/curate.log"; fi
tail -25 "$OUT/curate.log"
echo "total $(( $(date +%s) - T_START )) s"
exit "$RC"
