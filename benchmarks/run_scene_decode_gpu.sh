#!/usr/bin/env bash
# Scene detection's decode on NVDEC (thumbnails made on the GPU) against the CPU, on the device tool's GPU machine (one call):
#   carry [".carry_nvdec"]: bash benchmarks/run_scene_decode_gpu.sh
# Prepare on the development machine (about 59 MB, under one call's 64 MiB):
#   mkdir -p .carry_nvdec/whl && cp <av, scenedetect, platformdirs, tqdm, click wheels> .carry_nvdec/whl/
#   cp ../shared/fixtures/media/video/*.mp4 .carry_nvdec/videos/
# Writes $OUT/scene_decode.jsonl (benchmarks/scene_decode_gpu.py) and $OUT/lscpu.txt.
# The image's torch (CUDA) does the thumbnails; PyAV >= 18 (the carried wheel) hands it the frames.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scene_decode_out}
mkdir -p "$OUT"
{ date -u +%FT%TZ; nproc; lscpu; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > "$OUT/lscpu.txt" 2>&1
grep -E "^(Model name|Thread|Core|Socket|CPU\(s\))" "$OUT/lscpu.txt"
WHEELS=.carry_nvdec/whl source benchmarks/device_env.sh
python3 -c "import av, scenedetect, cv2; print('av', av.__version__, 'scenedetect', scenedetect.__version__, 'cv2', cv2.__version__)"
python3 benchmarks/scene_decode_gpu.py --videos .carry_nvdec/videos --out "$OUT/scene_decode.jsonl" \
  --repeats "${REPEATS:-3}" --parallel "${PARALLEL:-16}"
