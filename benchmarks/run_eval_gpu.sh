# One device call on a 1 x H200 machine (a few minutes): the FID/KID gpu tests and the evaluation
# cost per minute of video on CUDA. Writes fid_gpu.log, eval_cost.log and eval_cost_cuda.json under $OUT.
#
# Prepare on the development machine (ignored paths, carried with the call):
#   pip download torch-fidelity pytest pytest-timeout pluggy iniconfig --no-deps -d .whl/
#   mkdir -p .carry/fixtures/media/video .carry/fixtures/weights .carry/pylib
#   cp ../shared/fixtures/media/video/talk_{hdtf_aoc_512,hdtf_katiehill_512,retalking_face2}.mp4 .carry/fixtures/media/video/
#   cp ../shared/fixtures/weights/{asd_lightasd_pretrain_AVA.model,face_mediapipe_detector.tflite} .carry/fixtures/weights/
#   cp -r .venv/lib/python3.11/site-packages/python_speech_features .carry/pylib/   # pure Python, no wheel on PyPI
# Usage (device tool, kind nvidia-h200, carry [".whl", ".carry"]): bash benchmarks/run_eval_gpu.sh
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh
export PYTHONPATH=$PYTHONPATH:$PWD/.carry/pylib
# tests/conftest.py reads the fixtures from ../shared/fixtures.
mkdir -p ../shared && ln -sfn "$PWD/.carry/fixtures" ../shared/fixtures
export VIVIDHEAD_WEIGHTS_DIR=$PWD/.carry/fixtures/weights VIVIDHEAD_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, torchvision, scipy, torch_fidelity; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'scipy', scipy.__version__, 'torch-fidelity', torch_fidelity.__version__)" || exit 1

timeout -k 10 300 python3 -m pytest -q -m gpu -s -p no:cacheprovider tests/evaluation/test_fid_gpu.py \
  > "$OUT/fid_gpu.log" 2>&1
echo "gpu tests: rc $?"; grep -E "FID/KID|passed|failed|skipped|Error" "$OUT/fid_gpu.log" | head -20

timeout -k 10 240 python3 benchmarks/eval_cost.py --device cuda --repeats 3 --out "$OUT/eval_cost_cuda.json" \
  > "$OUT/eval_cost.log" 2>&1
echo "eval_cost: rc $?"; grep -v -E "^(INFO|W0000|WARNING)" "$OUT/eval_cost.log" | tail -15
