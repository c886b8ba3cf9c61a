#!/usr/bin/env bash
# The seed recipe end to end: train ViT-Tiny for 100 epochs on all 50,000 training images, test the final epoch,
# evaluate that checkpoint (python -m vit_cifar.evaluate's figures and report), and write one results file,
# $OUT/results.json.
#
#   scripts/reproduce.sh [more overrides for vit_cifar.train ...]
#   DATA=/path/to/cifar10-jpeg.tar.gz scripts/reproduce.sh
#   EPOCHS=2 scripts/reproduce.sh              # measure first: the time of an epoch on this machine
#
# Environment (all optional):
#   DATA     data.root: a torchvision folder (default data/, downloaded when missing), an image folder or archive
#   EPOCHS   trainer.max_epochs, default 100 (the seed's); the warmup stays a tenth of it (10 epochs at 100)
#   FAST     1 (default): the speed switches that leave the recipe as it is: the GPU data path
#            (data.device_aug=true, same augmentations, drawn per sample on the device), compile=auto (on CUDA),
#            precision auto (bf16-mixed on Ampere and newer). 0: the seed's per-image augmentation in CPU workers.
#   OUT      run folder, default outputs/reproduce/<date>_<time>
#   PYTHON   interpreter, default python3
#   WHEELS   folder of wheels (hydra-core, omegaconf, antlr4-python3-runtime) installed into $OUT/site when Hydra
#            is missing, e.g. WHEELS=../shared/wheels; nothing is fetched from the network
#   EVAL_ARGS  extra overrides for the evaluation only (e.g. "data.eval_batch_size=256")
#
# Sizing (docs/performance.md): the model does about 0.73 GFLOP per image forward, 2.2 with the backward pass, so
# an epoch of 50,000 images is about 110 TFLOP and 100 epochs about 11 PFLOP. To fit 8 minutes on one H100 with
# about 2 minutes of fixed costs (start, decoding the data once, compiling, testing, evaluating), training must
# run at 3.6 s per epoch or less, 14,000 images/s, about 31 TFLOP/s of bf16 (3% of the H100's dense peak).
# That is an estimate, not a measurement: run `python -m vit_cifar.benchmark --device-aug` or EPOCHS=2 on the
# device first (seconds per epoch = 50,000 / training images per second), then the full run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-100}
FAST=${FAST:-1}
OUT=${OUT:-outputs/reproduce/$(date +%Y-%m-%d_%H-%M-%S)}
DATA=${DATA:-data}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import hydra" 2>/dev/null; then
    if [[ -z "${WHEELS:-}" ]]; then
        echo "error: Hydra is not installed: pip install -e . (or set WHEELS=<folder of wheels>)" >&2
        exit 2
    fi
    SITE="$(cd "$OUT" && pwd)/site"
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi
if ! [[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: EPOCHS=$EPOCHS must be a whole number of epochs, at least 1" >&2
    exit 2
fi
WARMUP=$("$PY" -c "print($EPOCHS / 10)")  # the seed's 10 of 100 epochs
SPEED=()
[[ "$FAST" == 1 ]] && SPEED=(data.device_aug=true compile=auto)

start=$(date +%s)
"$PY" -m vit_cifar.train experiment=seed "trainer.max_epochs=$EPOCHS" "scheduler.warmup_epochs=$WARMUP" \
    "data.root=$DATA" "hydra.run.dir=$OUT/train" "${SPEED[@]}" "$@"
train_s=$(($(date +%s) - start))

CKPT=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['checkpoint'])" "$OUT/train/metrics.json")
start=$(date +%s)
# The same overrides as training (its data, model, device), through train=false: evaluate's own evaluation.
# shellcheck disable=SC2086  # EVAL_ARGS is a list of overrides
if "$PY" -m vit_cifar.train experiment=seed train=false "ckpt_path=$CKPT" "data.root=$DATA" \
    "hydra.run.dir=$OUT/evaluate" "$@" ${EVAL_ARGS:-}; then
    eval_status=done
else
    eval_status="failed (exit $?)"
fi
eval_s=$(($(date +%s) - start))

"$PY" - "$OUT" "$train_s" "$eval_s" "$eval_status" "$EPOCHS" "$FAST" "$*" <<'EOF'
import json, subprocess, sys
from pathlib import Path

out, train_s, eval_s, eval_status, epochs, fast, overrides = sys.argv[1:]
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
evaluation = Path(out) / "evaluate" / "metrics.json"
results = {
    "recipe": "experiment=seed", "epochs": int(epochs), "fast_path": fast == "1", "overrides": overrides,
    "train_and_test": json.loads((Path(out) / "train" / "metrics.json").read_text()),
    "train_and_test_wall_s": int(train_s),
    "evaluation": json.loads(evaluation.read_text()) if evaluation.is_file() else eval_status,
    "evaluation_wall_s": int(eval_s),
    "git": {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
}
(Path(out) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
m = results["train_and_test"]
print(f"reproduce: test_acc={m.get('test_acc', float('nan')):.4f} after {m['epochs']} epochs, train+test "
      f"{train_s} s, evaluation {eval_status} ({eval_s} s), {m['device']} -> {out}/results.json")
EOF
[[ "$eval_status" == done ]]
