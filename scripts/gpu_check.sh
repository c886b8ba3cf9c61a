#!/usr/bin/env bash
# The device check: what users run on a GPU, on one real GPU, in under 8 minutes on an H100/H200, on a machine
# without network that has torch, lightning, torchvision, torchmetrics, tensorboard, matplotlib and rich.
#
#   bash scripts/gpu_check.sh              # on the GPU machine, in the checkout root; results under $OUT
#   bash scripts/gpu_check.sh --dry-run    # anywhere: checks the inputs and each run's config (the config check
#                                          # of python -m vit_cifar.train), prints every command, runs none
#
# It needs a git-ignored .device/ folder carried with the checkout (docs/performance.md, "The device check"):
#   .device/wheels/*.whl            hydra-core, omegaconf and antlr4-python3-runtime wheels
#   .device/cifar10-jpeg.tar.gz     the offline CIFAR-10 copy
# and writes, under $OUT (default /tmp/gpu_check), one JSON file per step plus summary.json:
#   environment.json     GPU, compute capability, versions, and the precision `auto` resolves to
#   cuda_tests.json      the tests marked cuda (tests/test_cuda_device.py): mixed precision with fused AdamW and
#                        clipping, Inductor compile, no host sync in a training step (CUDA's sync debug mode)
#   seed_dataloader.json images/s of the CPU workers' training DataLoader of experiment=seed trainer=gpu
#                        data.device_aug=false (workers, sampler, per-image seeding, collation, pinned copies to
#                        the GPU), one epoch
#   seed_16-mixed.json   1 epoch of experiment=seed trainer=gpu on its default data path, 16-mixed, Inductor
#   fast.json            1 epoch of experiment=fast: bf16-mixed, Inductor, the GPU data path
#   notebook_1gpu.json   notebooks/train_kaggle_colab.ipynb's cells in order (train, evaluate, attention maps),
#                        1 epoch of the seed recipe on one GPU; notebook_2gpu.json: on two GPUs (ddp_notebook,
#                        forked), only where two are visible
#   summary.json         each step's exit code, seconds and the last lines of its log
# Each step has its own time limit, in order of importance; a failed or timed-out step does not stop the others.
# On one GPU the limits add up to 7 min 50 s, so that the whole check fits 8 minutes with the wheels' install and
# the summary; each compiling step leaves a minute or more for a cold Inductor compile. The exit code is 0 when
# every step passed. The first step that reads the data decodes the JPEG archive once (cached in
# /tmp/vit_cifar_cache for the others). The runs keep the default callbacks (progress bar included), as users do.
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

# The config check of python -m vit_cifar.train, on the dry run.
check_config() {  # check_config <overrides...>
    [[ $DRY == 1 ]] || return 0
    # Checked for this machine's GPU, or for an H100 (the lent device this script is for) where none is visible.
    "$PY" -c 'import sys; from vit_cifar import devices; from vit_cifar.config.entry import preflight
from vit_cifar.config.schema import validate_config
here = devices.local_device("auto")
gpu = here if here.type == "cuda" else devices.DeviceSpec.cuda(9, 0, memory=80 * 2**30)
preflight("train", sys.argv[1:], lambda cfg, multirun: validate_config(cfg, gpu))' "$@" "data.root=$DATA" || exit 2
}

# A training run keeping only its metrics.json (checkpoints are too large to come back).
train_run() {  # train_run <name> <limit> <overrides...>
    local name=$1 limit=$2
    shift 2
    local dir=/tmp/gpu_check_runs/$name
    check_config "$@"
    rm -rf "$dir"
    step "$name" "$limit" "$PY" -m vit_cifar.train "$@" "data.root=$DATA" "hydra.run.dir=$dir"
    if [[ -f "$dir/metrics.json" ]]; then cp "$dir/metrics.json" "$OUT/$name.json"; fi
}

# The notebook's code cells in order, in one namespace, with these parameters after its parameters cell (as
# papermill injects them); no Jupyter needed. Its metrics.json is kept.
notebook_run() {  # notebook_run <name> <limit> <gpus> <recipe overrides...>
    local name=$1 limit=$2 gpus=$3
    shift 3
    local dir=/tmp/gpu_check_runs/$name
    local hardware=(trainer=gpu)  # as the notebook's hardware cell chooses it
    ((gpus > 1)) && hardware+=("trainer.devices=$gpus" "+trainer.strategy=ddp_notebook")
    check_config "$@" "${hardware[@]}"
    rm -rf "$dir"
    step "$name" "$limit" "$PY" - "$gpus" "$dir" "$DATA" "$@" <<'EOF'
import importlib.util, json, sys, types

gpus, out, data, recipe = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
parameters = f"RECIPE = {recipe!r}\nDATA_ROOT = {data!r}\nGPUS = {gpus}\nOUTPUT_DIR = {out!r}\n"
parameters += "INSTALL = False\nTENSORBOARD = False\n"
if importlib.util.find_spec("IPython") is None:  # the evaluation cell shows its figures with IPython.display
    display = types.ModuleType("IPython.display")
    display.display = display.Image = display.Markdown = lambda *args, **kwargs: None
    sys.modules.update({"IPython": types.ModuleType("IPython"), "IPython.display": display})
names = {"__name__": "__main__"}
for cell in json.load(open("notebooks/train_kaggle_colab.ipynb"))["cells"]:
    if cell["cell_type"] == "code":
        exec(compile("".join(cell["source"]), "notebook", "exec"), names)
        if "parameters" in cell["metadata"].get("tags", []):
            exec(parameters, names)
print(json.dumps({k: names["metrics"].get(k) for k in ("test_acc", "precision", "compile", "device", "wall_s")}))
EOF
    if [[ -f "$dir/metrics.json" ]]; then cp "$dir/metrics.json" "$OUT/$name.json"; fi
}

step environment 20 "$PY" - "$OUT/environment.json" <<'EOF'
import json, sys
import lightning, torch
from vit_cifar.devices import local_device, resolve_precision
device = local_device("auto")
info = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "lightning": lightning.__version__,
        "device": device.type, "capability": device.capability, "triton": device.triton,
        "precision_auto": resolve_precision("auto", device), "gpus": torch.cuda.device_count()}
if torch.cuda.is_available():
    info["name"] = torch.cuda.get_device_name()
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
EOF

# pytest is not installed there: the file runs its tests itself
step cuda_tests 90 "$PY" tests/test_cuda_device.py --json "$OUT/cuda_tests.json"

# The seed recipe as users run it on a GPU, on its default data path (data.device_aug: auto, the GPU data path)
SEED=(experiment=seed trainer=gpu trainer.max_epochs=1 scheduler.warmup_epochs=0.1)
check_config "${SEED[@]}"
# The rate of the CPU workers' path (data.device_aug=false), which docs/performance.md estimates from one CPU
# core; data.pin_memory=true: what null resolves to when the trainer runs on CUDA (there is no trainer here)
step seed_dataloader 60 "$PY" - "$OUT/seed_dataloader.json" "${SEED[@]}" "data.root=$DATA" data.pin_memory=true data.device_aug=false <<'EOF'
import json, sys, time
import torch
from vit_cifar.config.entry import compose_config
from vit_cifar.training.run import build_datamodule

datamodule = build_datamodule(compose_config(sys.argv[2:], "/tmp/gpu_check_runs/seed_dataloader"))
datamodule.setup("fit")
loader = datamodule.train_dataloader()
batches = iter(loader)
next(batches)  # the workers' start-up is not their rate
images, start = 0, time.perf_counter()
for x, _ in batches:  # copied to the GPU as Lightning copies a batch
    images += len(x.to("cuda", non_blocking=True))
torch.cuda.synchronize()
seconds = time.perf_counter() - start
result = {"images_per_s": round(images / seconds), "images": images, "seconds": round(seconds, 1),
          "num_workers": getattr(loader, "num_workers", None), "batch_size": getattr(loader, "batch_size", None)}
json.dump(result, open(sys.argv[1], "w"), indent=2)
print(result)
EOF
train_run seed_16-mixed 130 "${SEED[@]}" trainer.precision=16-mixed compile=true
# bf16-mixed with Inductor and the GPU data path: experiment=fast is that recipe
train_run fast 100 experiment=fast trainer.max_epochs=1 scheduler.warmup_epochs=0.1
# compile=false: as compile=auto on the notebook's T4s (the compiled paths are the runs above)
NOTEBOOK=(experiment=seed trainer.max_epochs=1 scheduler.warmup_epochs=0.1 compile=false)
notebook_run notebook_1gpu 70 1 "${NOTEBOOK[@]}"
if [[ $DRY == 1 ]] || (($(nvidia-smi -L 2>/dev/null | grep -c '^GPU') >= 2)); then
    [[ $DRY == 1 ]] && echo "(only where 2 GPUs are visible:)"
    notebook_run notebook_2gpu 100 2 "${NOTEBOOK[@]}"
else
    echo "== notebook_2gpu: skipped, fewer than 2 GPUs visible"
fi

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
summary = {"passed": all(s["exit"] == 0 for s in steps.values()), "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: (v["exit"], v["seconds"]) for k, v in steps.items()}))
sys.exit(0 if summary["passed"] else 1)
EOF
