# One device call on a 1 x H100 or H200 machine (about 5 minutes): the fine-tuning memory budget
# (benchmarks/finetune_memory.py: Lite and Pro, LoRA r=32 on self_attn/cross_attn/ffn and
# full fine-tuning, with and without activation checkpointing, 512x512x33, batch 1, random weights at
# the released shapes). Writes finetune_memory.jsonl and finetune_memory.log under $OUT.
#
# Prepare on the development machine (ignored paths, carried with the call):
#   .venv/bin/pip download peft==0.21.2 accelerate==1.16.0 psutil==7.2.2 webdataset==1.0.2 braceexpand==0.1.7 \
#       --no-deps -d .whl/
#   and .whl_serve/ as in benchmarks/run_serve_load_gpu.sh (diffusers, av, soundfile: the trainer imports them)
# Usage (device tool, carry [".whl", ".whl_serve"]):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl_serve/*.whl; bash benchmarks/run_finetune_memory_gpu.sh
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, peft, diffusers, transformers; print('torch', torch.__version__, 'peft', peft.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" || exit 1
date -u +%Y-%m-%dT%H:%MZ
timeout -k 10 560 python3 benchmarks/finetune_memory.py --device cuda --out "$OUT/finetune_memory.jsonl" \
  > "$OUT/finetune_memory.log" 2>&1
echo "finetune_memory: rc $?"
grep '^{' "$OUT/finetune_memory.log"
