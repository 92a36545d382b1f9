#!/usr/bin/env bash
# One device call on a 4 x H200 host (writes under $OUT): the Lite single-GPU suite on GPU 3 in the
# background; the 14B DiT step on 1 GPU (GPU 0) and on 2 GPUs (GPUs 1,2) side by side; the 14B VAE
# on GPU 0; then the 14B DiT step on all 4 GPUs once GPU 3 is free.
# Usage (device tool): bash benchmarks/run_inference_x4.sh
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=benchmarks/inference.py
(CUDA_VISIBLE_DEVICES=3 timeout 350 python3 $B --suite single --variants lite --out $OUT/lite.json > $OUT/lite.log 2>&1) &
LITE=$!
(CUDA_VISIBLE_DEVICES=0 timeout 230 torchrun --nproc-per-node 1 --master-port 29501 $B --suite sp --variants 14b --out $OUT/sp1.json > $OUT/sp1.log 2>&1;
 CUDA_VISIBLE_DEVICES=0 timeout 80 python3 $B --suite single --variants 14b --part vae --out $OUT/vae14.json > $OUT/vae14.log 2>&1) &
S1=$!
CUDA_VISIBLE_DEVICES=1,2 timeout 230 torchrun --nproc-per-node 2 --master-port 29502 $B --suite sp --variants 14b --out $OUT/sp2.json > $OUT/sp2.log 2>&1
wait $S1 $LITE
timeout 170 torchrun --nproc-per-node 4 --master-port 29504 $B --suite sp --variants 14b --out $OUT/sp4.json > $OUT/sp4.log 2>&1
grep -h '^{' $OUT/*.log
grep -h -i -E 'error|xfuser|Traceback' $OUT/*.log | sort | uniq -c | head -20
