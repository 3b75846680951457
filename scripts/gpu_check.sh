#!/usr/bin/env bash
# The GPU paths this project has never run (no GPU was available while writing them), checked in ~5 minutes on one
# CUDA node with the tiny offline Qwen2-VL (nothing is downloaded):
#   1. environment: GPUs, torch CUDA build, bf16 support, flash-attn / vLLM / bitsandbytes installed?
#   2. pre-flight on this node (aloevision.preflight with the detected GPUs)
#   3. training: the tiny model, 3 steps in bf16 with flash-attention (SDPA when flash-attn is missing)
#   4. the pre-timeout signal on GPU: USR2 mid-training writes a checkpoint, the re-run resumes from it
#   5. scoring: a vLLM tagging batch (explicit tp=1 / memory share) + perplexity on the same GPU
#   6. evaluation on GPU (model.loading places the model on cuda:0)
# Usage: scripts/gpu_check.sh [python]       (default: .venv/bin/python, else python3)
# Results: one line per check in $OUT/gpu_check.txt (or ./gpu_check_out/), logs beside it; exit 1 if any failed.
set -u
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
ROOT=$(mktemp -d /tmp/aloevision-gpu-check.XXXX)
export ALOEVISION_ROOT=$ROOT WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
RESULTS=$OUT/gpu_check.txt
: > "$RESULTS"
FAILED=0
COMMON=(paths.cache_dir=$ROOT/cache paths.demo_dir=$ROOT/demo_data wandb.mode=disabled)
BF16=(model.dtype=bfloat16 model.recipe.bf16=true model.attn_implementation=flash_attention_2)

check() {  # check <name> <timeout s> <command...>  (a shell function runs without the timeout)
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS runner=(timeout "$limit")
  [ "$(type -t "$1")" = function ] && runner=()
  if "${runner[@]}" "$@" > "$OUT/$name.log" 2>&1; then
    echo "PASS $name ($((SECONDS - t0)) s)" | tee -a "$RESULTS"
  else
    echo "FAIL $name (rc $?, $((SECONDS - t0)) s): tail of $OUT/$name.log" | tee -a "$RESULTS"
    tail -n 15 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$RESULTS"
    FAILED=1
  fi
}

check env 120 "$PY" - <<'EOF'
import importlib.util, torch
assert torch.cuda.is_available(), f"no CUDA (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB cc {p.major}.{p.minor}")
print("torch", torch.__version__, "cuda", torch.version.cuda, "bf16", torch.cuda.is_bf16_supported())
for m in ("flash_attn", "vllm", "bitsandbytes", "deepspeed"):
    print(m, "installed" if importlib.util.find_spec(m) else "MISSING")
EOF
cat "$OUT/env.log" >> "$RESULTS"

check preflight_gpus 120 env PYTHONPATH=src "$PY" - <<'EOF'
from hydra import compose, initialize_config_dir
import os
from aloevision.config import register_configs
from aloevision.model.loading import Devices
from aloevision.preflight import check
register_configs()
with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base="1.3"):
    cfg = compose("config", overrides=["stage=train", "model.dtype=bfloat16", "model.recipe.bf16=true",
                                       "model.attn_implementation=flash_attention_2",
                                       f"paths.root={os.environ['ALOEVISION_ROOT']}", "paths.output_dir=/tmp/x"])
d = Devices.detect()
print(d)
print(check(cfg, devices=d))
EOF

RUN=$ROOT/runs/train_bf16
check train_bf16 600 "$PY" launch.py stage=train train.max_steps=3 "${BF16[@]}" "${COMMON[@]}" hydra.run.dir=$RUN
check train_report 30 "$PY" -c "
import json; r = json.load(open('$RUN/run_record.json'))['stages']['train']
print('attn', r['attn_implementation'], 'steps', r['max_steps'], 'loss', r.get('train/last_loss'))
assert r['attn_implementation'] in ('flash_attention_2', 'sdpa')"

# The pre-timeout signal on GPU: USR2 after step 2 -> checkpoint, exit 140; the same command resumes to step 8.
SIG=$ROOT/runs/signal
sig_test() {
  "$PY" launch.py stage=train train.max_steps=8 train.save_steps=100 "${BF16[@]}" "${COMMON[@]}" hydra.run.dir=$SIG &
  local pid=$!
  for _ in $(seq 600); do
    "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$SIG/train_progress.json'))['step'] >= 2 else 1)" \
      2>/dev/null && break
    sleep 0.5
  done
  kill -USR2 $pid; wait $pid; local rc=$?
  echo "first run exit $rc (expect 140)"; [ $rc -eq 140 ] || return 1
  ls "$SIG/checkpoints"
  "$PY" launch.py stage=train train.max_steps=8 train.save_steps=100 "${BF16[@]}" "${COMMON[@]}" hydra.run.dir=$SIG
  "$PY" -c "import json; r = json.load(open('$SIG/run_record.json')); print(r['stages']['train']['resumed_from']);
assert r['metrics']['train/global_step'] == 8 and r['stages']['train']['resumed_from']"
}
check signal_resume 900 sig_test

# vLLM tagging + perplexity on one GPU: the tiny model has no MODEL_SPECS entry, so the layout is explicit.
check score_vllm 600 "$PY" launch.py stage=score filter=paper filter.scorer.backend=vllm filter.scorer.tag_model=null \
  filter.scorer.ppl_model=null filter.scorer.tensor_parallel_size=1 filter.scorer.gpu_memory_utilization=0.4 \
  filter.scorer.max_model_len=4096 "${COMMON[@]}" hydra.run.dir=$ROOT/runs/score_vllm
check score_transformers 600 "$PY" launch.py stage=score filter=paper filter.scorer.backend=transformers \
  filter.scorer.tag_model=null filter.scorer.ppl_model=null "${COMMON[@]}" hydra.run.dir=$ROOT/runs/score_hf

check eval_gpu 600 "$PY" launch.py stage=eval eval.model=$RUN "${BF16[@]}" "${COMMON[@]}" hydra.run.dir=$ROOT/runs/eval

echo "results: $RESULTS"
exit $FAILED
