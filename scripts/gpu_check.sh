#!/usr/bin/env bash
# The device check: every CUDA-only path of vit-cifar on one real GPU, in under 8 minutes on an H100/H200, on a
# machine without network that has torch, lightning, torchvision, torchmetrics, tensorboard, matplotlib and rich.
#
#   bash scripts/gpu_check.sh              # on the GPU machine, in the checkout root; results under $OUT
#   bash scripts/gpu_check.sh --dry-run    # anywhere: checks the inputs and each run's config (the config check
#                                          # of python -m vit_cifar.train), prints every command, runs none
#
# It needs a git-ignored .device/ folder carried with the checkout (docs/performance.md, "The device check"):
#   .device/wheels/*.whl            hydra-core, omegaconf and antlr4-python3-runtime wheels
#   .device/cifar10-jpeg.tar.gz     the offline CIFAR-10 copy
# and writes, under $OUT (default /tmp/gpu_check), one JSON file per step plus summary.json:
#   environment.json   GPU, compute capability, versions, and the precision `auto` resolves to
#   cuda_tests.json    the tests marked cuda (tests/test_cuda_device.py): mixed precision with fused AdamW and
#                      clipping, Inductor compile, no host sync in a training step (CUDA's sync debug mode)
#   seed_16-mixed.json, seed_bf16-mixed.json   2 epochs of the seed recipe, GPU data path, compile=true
#   benchmark.json     python -m vit_cifar.benchmark --device-aug --compile (Lightning vs the plain loop,
#                      inference vs timm if present, fused vs foreach AdamW, the data paths)
#   fast.json          a short experiment=fast (2 epochs)
#   summary.json       each step's exit code, seconds and the last lines of its log
# Each step has its own time limit (together 7 min 50 s, so the whole check fits 8 minutes with the wheels'
# install and the summary), in order of importance; a failed or timed-out step does not stop the others. The
# exit code is 0 when every step passed. The first training run decodes the JPEG archive once (cached in
# /tmp/vit_cifar_cache for the others) and compiles; Inductor's on-disk cache shortens the later compiles.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python}
DEVICE_DIR=${DEVICE_DIR:-.device}
DATA=$DEVICE_DIR/cifar10-jpeg.tar.gz
mkdir -p "$OUT"

for needed in "$DEVICE_DIR/wheels" "$DATA"; do
    if [[ ! -e "$needed" ]]; then
        echo "error: $needed is missing: see docs/performance.md, \"The device check\"" >&2
        exit 2
    fi
done
if ! compgen -G "$DEVICE_DIR/wheels/*.whl" >/dev/null; then
    echo "error: no wheels in $DEVICE_DIR/wheels: copy hydra-core, omegaconf and antlr4 wheels there" >&2
    exit 2
fi

if [[ $DRY == 0 ]]; then
    pip install -q --no-index --no-deps --target /tmp/site "$DEVICE_DIR"/wheels/*.whl && export PYTHONPATH=/tmp/site:src
else
    echo "pip install -q --no-index --no-deps --target /tmp/site $DEVICE_DIR/wheels/*.whl && export PYTHONPATH=/tmp/site:src"
    export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 VIT_CIFAR_CACHE=/tmp/vit_cifar_cache

# Runs one step with a time limit, its log in $OUT/<name>.log, and records it for summary.json.
STEPS=()
step() {
    local name=$1 limit=$2
    shift 2
    if [[ $DRY == 1 ]]; then
        echo "[$name, at most ${limit}s] $*"
        return 0
    fi
    echo "== $name (at most ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    STEPS+=("$name $rc $((SECONDS - start))")
    echo "   exit $rc after $((SECONDS - start))s"
    return 0
}

# A training run keeping only its metrics.json (checkpoints are too large to come back).
train_run() {  # train_run <name> <limit> <overrides...>
    local name=$1 limit=$2
    shift 2
    local dir=/tmp/gpu_check_runs/$name
    if [[ $DRY == 1 ]]; then  # the run's config check, as python -m vit_cifar.train does it first
        "$PY" -c 'import sys; from vit_cifar.config.entry import preflight; from vit_cifar.config.schema import validate_config
preflight("train", sys.argv[1:], validate_config)' "$@" "data.root=$DATA" "hydra.run.dir=$dir" || exit 2
    fi
    rm -rf "$dir"
    step "$name" "$limit" "$PY" -m vit_cifar.train "$@" "data.root=$DATA" "hydra.run.dir=$dir" \
        callbacks.progress_bar=null
    if [[ -f "$dir/metrics.json" ]]; then cp "$dir/metrics.json" "$OUT/$name.json"; fi
}

step environment 30 "$PY" - "$OUT/environment.json" <<'EOF'
import json, sys
import lightning, torch
from vit_cifar.devices import local_device, resolve_precision
device = local_device("auto")
info = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "lightning": lightning.__version__,
        "device": device.type, "capability": device.capability, "triton": device.triton,
        "precision_auto": resolve_precision("auto", device)}
if torch.cuda.is_available():
    info["name"] = torch.cuda.get_device_name()
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
EOF

# pytest is not installed there: the file runs its tests itself
step cuda_tests 90 "$PY" tests/test_cuda_device.py --json "$OUT/cuda_tests.json"
# 2 epochs of the seed recipe (warmup a tenth, as scripts/reproduce.sh), the GPU data path and Inductor
SEED=(experiment=seed trainer.max_epochs=2 scheduler.warmup_epochs=0.2 data.device_aug=true compile=true)
train_run seed_16-mixed 120 "${SEED[@]}" trainer.precision=16-mixed
train_run seed_bf16-mixed 80 "${SEED[@]}" trainer.precision=bf16-mixed
step benchmark 100 "$PY" -m vit_cifar.benchmark --device-aug --compile --steps 30 --repeats 3 --data "$DATA" \
    --out "$OUT/benchmark"
train_run fast 50 experiment=fast trainer.max_epochs=2 scheduler.warmup_epochs=0.2

[[ $DRY == 1 ]] && exit 0
"$PY" - "$OUT" "${STEPS[@]}" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = {}
for entry in sys.argv[2:]:
    name, rc, seconds = entry.split()
    log = out / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
    steps[name] = {"exit": int(rc), "seconds": int(seconds), "log_tail": tail}
bench = sorted((out / "benchmark").glob("*.json")) if (out / "benchmark").is_dir() else []
if bench:
    (out / "benchmark.json").write_text(bench[-1].read_text())
summary = {"passed": all(s["exit"] == 0 for s in steps.values()), "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: (v["exit"], v["seconds"]) for k, v in steps.items()}))
sys.exit(0 if summary["passed"] else 1)
EOF
