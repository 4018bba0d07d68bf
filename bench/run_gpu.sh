#!/usr/bin/env bash
# Every GPU benchmark in one call, ordered by what matters most, each piece under the time still left, so a
# short device lease still returns the finished pieces. Results: $OUT/*.json (or bench/results/gpu when unset).
#   bash bench/run_gpu.sh [seconds, default 540] [pieces, default all: gen_gpt2,gen_t5,ppo_gpt2,...]
# Logs go to $LOGS (default /tmp/gpu_logs), only the JSON results to $OUT.
# On a CUDA machine without hydra/omegaconf, put their wheels in .gpu_wheels/ (see ../shared/wheels).
set -u
BUDGET=${1:-540}
PIECES=${2:-all}
OUT=${OUT:-bench/results/gpu}
LOGS=${LOGS:-/tmp/gpu_logs}
mkdir -p "$OUT" "$LOGS"
if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_wheels/*.whl
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
echo "== done after $(( $(date +%s) - START ))s"
