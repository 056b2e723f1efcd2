#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call of a few minutes (bench/RESULTS.md has the results):
#   1. tests/test_cuda.py: losses, bf16 training and evaluation on the GPU against the CPU;
#   2. bench/losses.py --device cuda: memory and time of our losses against open_clip's;
#   3. bench/train_throughput.py --device cuda: ViT-B/16 step, samples/s and MFU against open_clip's step;
#   4. bench/compute_scaling.py: zero-shot scores at the default budget and at 10x (needs data, made here);
#   5. bench/size_memory.py --device cuda: the paper-sized models' bf16 memory per sample.
#
# Usage, from the repository root on a machine with python3, torch >= 2.11 and CUDA:
#     bash bench/gpu_checks.sh OUT_DIR [WHEEL_DIR]
# WHEEL_DIR (default .whl) holds wheels of the packages that machine lacks (open_clip_torch, ftfy,
# wcwidth, monai, webdataset, braceexpand, nibabel, ImageHash, PyWavelets, transformers, tokenizers,
# safetensors, huggingface_hub, regex); they are installed into
# /tmp/site. Each part has its own time limit and log in OUT_DIR, so one failure does not hide the rest.
set -u
out=${1:?usage: bash bench/gpu_checks.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-.whl}
mkdir -p "$out"
if compgen -G "$wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
start=$SECONDS
part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, print its tail
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s (at $((SECONDS - start)) s)" | tee -a "$out/summary.txt"
    tail -n 30 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/summary.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$out/summary.txt"

# The corpus and its curation for part 4, on the CPU cores while parts 1-3 use the GPU.
(python3 -m medvlp synth data --quiet >/dev/null && python3 -m medvlp curate && python3 -m medvlp pretrain-text) \
    >"$out/data.log" 2>&1 &
data_pid=$!

part cuda_tests 150 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -x
part losses 120 python3 bench/losses.py --device cuda --markdown
part throughput 120 python3 bench/train_throughput.py --device cuda --markdown --json "$out/throughput.json"
wait "$data_pid"
echo "== data: rc $?, ready at $((SECONDS - start)) s" | tee -a "$out/summary.txt"
part scaling "${SCALING_LIMIT_S:-220}" python3 bench/compute_scaling.py --models conceptclip fvlm --runs 1x1 10x1 \
    --workers 6 --json "$out/scaling.json"
part size_memory 60 python3 bench/size_memory.py --device cuda --batch 8
echo "== all: $((SECONDS - start)) s" | tee -a "$out/summary.txt"
