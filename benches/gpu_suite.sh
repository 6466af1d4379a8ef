#!/usr/bin/env bash
# Every GPU figure pvrs owes, in one command, into one results file (Markdown, all output).
#
#   benches/gpu_suite.sh [--out FILE] [--tokenizer DIR]   # on one H100/H200, under 8 minutes
#   (default FILE: gpu_suite_results.md in $OUT if set, else in the current folder)
#   benches/gpu_suite.sh --dry-run [--out FILE]           # the same code on CPU, tiny configs
#
# Figures (real-size configs, bf16, random weights, the built-in tokenizer; no downloads):
#   1. extraction vs a bare decoder forward, with and without prefix reuse, and the reference
#      method (one sample per pass, output_hidden_states), with the device-to-host share of CUDA
#      time: Qwen2.5-7B and Gemma-2-9B configs (benches/bench_extract.py);
#   2. steering overhead during generation (benches/bench_steering.py, Qwen2.5-7B config);
#   3. generation and capture on vLLM vs transformers (benches/bench_generate.py), and steered
#      generation of `pvrs eval`'s grid, one vLLM batch vs transformers hooks cell by cell
#      (benches/bench_steered_generate.py, Qwen2.5-7B config), only where `import vllm` works;
#      otherwise the file says they were skipped.
#
# On the device machine (see /work/shared/gpu/prepare.sh, which fills .gpu/): carry ".gpu";
# when pvrs does not import, this script installs .gpu/whl/*.whl into /tmp/site, and it
# loads the tokenizer from .gpu/tok when that folder exists (the GGUF does not travel).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dry=0
out="${OUT:-$PWD}/gpu_suite_results.md"  # $OUT: the device machine's folder that comes back
tokenizer=""
[[ -d "$root/.gpu/tok" ]] && tokenizer="$root/.gpu/tok"
while (($#)); do
    case "$1" in
        --dry-run) dry=1 ;;
        --out) out=$2; shift ;;
        --tokenizer) tokenizer=$2; shift ;;
        *) echo "gpu_suite.sh: unknown argument '$1'; use --dry-run, --out FILE, --tokenizer DIR" >&2; exit 2 ;;
    esac
    shift
done
out=$(realpath -m "$out")  # the suite runs from benches/
py=${PYTHON:-python3}
if ! "$py" -c "import pvrs._core" 2>/dev/null; then
    wheels=("$root"/.gpu/whl/*.whl)
    if [[ ! -e "${wheels[0]}" ]]; then
        echo "gpu_suite.sh: pvrs does not import and .gpu/whl holds no wheel; run maturin develop --release (here) or /work/shared/gpu/prepare.sh (for the GPU machine)" >&2
        exit 2
    fi
    "$py" -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
tok=()
[[ -n "$tokenizer" ]] && tok=(--tokenizer "$tokenizer")

if ((dry)); then
    models=(tiny) steer_model=tiny device=cpu dtype=float32
    extract=(--questions 3 --batch-tokens 2048) steer=(--new-tokens 4 --repeats 1)
    steered=(--questions 1 --max-new-tokens 4 --rounds 1)  # the built-in model: vLLM's CPU kernels need 64-wide heads
else
    models=(qwen2.5-7b gemma-2-9b) steer_model=qwen2.5-7b device=cuda dtype=bfloat16
    extract=(--questions 64 --rounds 2) steer=(--new-tokens 64 --repeats 3)
    steered=(--gpu --questions 8 --max-new-tokens 64 --rounds 1)
fi

cd "$root/benches"
mkdir -p "$(dirname "$out")"
section() { printf '\n## %s\n\n```\n$ %s\n' "$1" "${*:2}"; "${@:2}"; printf '```\n'; }
{
    echo "# pvrs GPU suite$( ((dry)) && echo ' (dry run: CPU, tiny configs)')"
    echo
    echo "- date: $(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
    echo "- device: ${gpu:-$device}, $(nproc) CPUs"
    echo "- targets: pvrs-noprefix / bare decoder >= 0.95x; pvrs / bare decoder >= 1.6x (Qwen) / 1.4x (Gemma); device-to-host < 2 % of CUDA time"
    for model in "${models[@]}"; do
        section "extraction: $model ($dtype)" "$py" bench_extract.py --model "$model" --device "$device" --dtype "$dtype" \
            --modes bare-body pvrs pvrs-noprefix reference "${extract[@]}" "${tok[@]}"
    done
    section "steering overhead during generation: $steer_model ($dtype)" "$py" bench_steering.py --model "$steer_model" \
        --device "$device" --dtype "$dtype" "${steer[@]}" "${tok[@]}"
    if "$py" -c "import vllm" 2>/dev/null; then
        section "generation and capture: vLLM vs transformers" "$py" bench_generate.py --dtype "$dtype" --rounds 1
        section "steered generation: vLLM vs transformers (pvrs eval's grid)" "$py" bench_steered_generate.py \
            "${steered[@]}" "${tok[@]}"
    else
        printf '\n## generation and capture: vLLM vs transformers\n\nskipped: vllm does not import here\n'
        printf "\n## steered generation: vLLM vs transformers (pvrs eval's grid)\n\nskipped: vllm does not import here\n"
    fi
} 2>&1 | tee "$out"
echo "results: $out"
