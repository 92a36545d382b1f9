#!/usr/bin/env bash
# The curation's torch model stages on one GPU (benchmarks/model_stages_gpu.py), for the device tool.
# Needs, git-ignored in the working tree (see benchmarks/run_eval_gpu.sh for .whl and .carry):
#   .carry/fixtures/weights/asd_lightasd_pretrain_AVA.model, .carry/pylib/python_speech_features,
#   .carry/jfk.npy = ../shared/fixtures/media/audio/speech_jfk_16k.wav as int16 samples (numpy.save)
# Usage (device tool, kind nvidia-h200, carry [".whl", ".carry"]): bash benchmarks/run_model_stages_gpu.sh
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh
export PYTHONPATH=$PYTHONPATH:$PWD/.carry/pylib
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
timeout -k 10 400 python3 benchmarks/model_stages_gpu.py --asd-weights .carry/fixtures/weights/asd_lightasd_pretrain_AVA.model \
  --speech .carry/jfk.npy --pylib .carry/pylib --repeats 3
echo "model_stages_gpu: rc $?"
