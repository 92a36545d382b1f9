#!/usr/bin/env bash
# Second 4 x H200 call (writes under $OUT): 14B DiT step with xfuser USP on 2 GPUs (Ulysses 2) while
# stock diffusers 14B and ours run eager on GPU 2; then 4 GPUs with Ulysses 4.
# Usage (device tool): bash benchmarks/run_inference_x4_sp.sh
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=benchmarks/inference.py
(CUDA_VISIBLE_DEVICES=2 timeout 200 python3 $B --suite single --variants 14b --no-compile --out $OUT/stock14.json > $OUT/stock14.log 2>&1) &
S=$!
CUDA_VISIBLE_DEVICES=0,1 timeout 210 torchrun --nproc-per-node 2 --master-port 29502 $B --suite sp --variants 14b --out $OUT/sp2.json > $OUT/sp2.log 2>&1
wait $S
timeout 190 torchrun --nproc-per-node 4 --master-port 29504 $B --suite sp --variants 14b --out $OUT/sp4.json > $OUT/sp4.log 2>&1
grep -h '^{' $OUT/*.log
grep -h -i -E 'error|xfuser|Traceback' $OUT/*.log | sort | uniq -c | head -20
