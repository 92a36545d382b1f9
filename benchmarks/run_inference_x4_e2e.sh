python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
# One device call on a 4 x H200 host (~7-8 min, hard stop < 10 min; writes 7 files under $OUT):
# the 14B end-to-end streaming cycle (LiveTalk Fig. 6 breakdown) with benchmarks/inference_sp.py.
#   1. 4 GPUs, one torchrun: Ulysses 4 (xfuser's initialize_model_parallel groups), then Ulysses 2 x
#      Ring 2 and Ring 4 in the same processes (compiled DiT reused; Ring 4 only if started within
#      --time-budget). Also the parallel-VAE vs single-GPU VAE ratio.
#   2. 1 GPU (GPU 0, plain VAE) beside 2 GPUs (GPUs 1,2: Ulysses 2, then Ring 2).
# Every torchrun rewrites its JSON after each figure, so a timeout keeps what was measured.
# Usage (device tool, kind nvidia-h200-x4): bash benchmarks/run_inference_x4_e2e.sh
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=benchmarks/inference_sp.py
T0=$(date +%s)
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader

timeout -k 10 290 torchrun --nproc-per-node 4 --master-port 29504 $B --variant 14b --ulysses 4 --ring 1 \
  --also 2x2 1x4 --time-budget 180 --out $OUT/sp4.json > $OUT/sp4.log 2>&1
echo "4-GPU phase: rc $? after $(( $(date +%s) - T0 )) s"

LEFT=$(( T0 + 540 - $(date +%s) )); [ $LEFT -gt 270 ] && LEFT=270
echo "1-GPU and 2-GPU phase: timeout $LEFT s"
(CUDA_VISIBLE_DEVICES=0 timeout -k 10 $LEFT torchrun --nproc-per-node 1 --master-port 29501 $B --variant 14b --chunks 3 \
  --out $OUT/sp1.json > $OUT/sp1.log 2>&1; echo "1-GPU: rc $?") &
S1=$!
CUDA_VISIBLE_DEVICES=1,2 timeout -k 10 $LEFT torchrun --nproc-per-node 2 --master-port 29502 $B --variant 14b \
  --ulysses 2 --ring 1 --also 1x2 --out $OUT/sp2.json > $OUT/sp2.log 2>&1
echo "2-GPU: rc $?"
wait $S1
echo "total $(( $(date +%s) - T0 )) s"

grep -h '^{' $OUT/sp4.log $OUT/sp1.log $OUT/sp2.log > $OUT/all.jsonl
# compact summary (the full rows are in all.jsonl)
python3 - $OUT/all.jsonl <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    f = r.pop("figure")
    if f == "e2e":
        b = r["breakdown_ms"]
        print(f"e2e gpus={r['gpus']} U{r['ulysses']}R{r['ring']} {r['backend']}/{r.get('attn', '-')} vae={r['vae']}: "
              + " ".join(f"{k}={v:.1f}" for k, v in b.items())
              + f" ms | sustained {r['sustained_fps']:.2f} fps | first {r['first_frames_s']:.3f} s | dit step"
              f" {r['dit_step_ms']:.1f} ms (rel err {r['dit_rel_err_vs_eager_1gpu']:.2e}) | warm-up {r['warmup_s']:.0f} s"
              f" | peak {r['peak_mem_gib'] or 0:.1f} GiB | ranks agree {r['ranks_identical_frames']}")
    else:
        print(f, json.dumps(r))
PYEOF
grep -h -i -E 'error|exception|xfuser|Traceback|failed|out of memory' $OUT/*.log | grep -v '^{' | sort | uniq -c | sort -rn | head -20
