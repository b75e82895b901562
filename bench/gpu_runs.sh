#!/usr/bin/env bash
# The GPU measurements still owed to the speed work, in order of what they decide, each under its own time limit
# so one call of a few minutes brings back whatever finished. Results go to $OUT (default: bench/results/new).
#   bash bench/gpu_runs.sh [stage ...]     stages: tests compile-sd15 compile-sdxl restart profile batching lowvram
#                                          tome fp8 attention options imports (restart needs a compile stage before it,
#                                          to fill the cache)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/new}"
work="${BENCH_WORKDIR:-/tmp/bench}"
mkdir -p "$out" "$work"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests compile-sd15 profile compile-sdxl batching lowvram tome fp8)

run() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name (up to ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? ; last lines:"
    grep -v "it/s\]" "$out/$name.log" | tail -4
}

for stage in "${stages[@]}"; do
    case $stage in
        tests) run cuda-tests "${TESTS_LIMIT:-420}" python -m pytest -q -o addopts="" -p no:cacheprovider tests/test_unet_graph_capture_failure.py \
            tests/test_device_warm_up.py tests/test_unet_compile_cuda.py tests/test_unet_graph.py tests/test_token_merging_cuda.py tests/test_offload_cuda.py tests/test_controlnet_cuda.py tests/test_lora_cuda.py tests/test_nan_check_cuda.py ;;
        compile-sd15) run compile-sd15 560 python bench/bench_compile.py --workdir "$work" --families sd15 \
            --repeats "${REPEATS:-5}" --out "$out/compile-sd15.json" ;;
        compile-sdxl) run compile-sdxl 560 python bench/bench_compile.py --workdir "$work" --families sdxl \
            --repeats "${REPEATS:-3}" --out "$out/compile-sdxl.json" ;;
        restart) run restart 400 python bench/bench_restart.py --workdir "$work" --families "${RESTART_FAMILIES:-sd15}" \
            --out "$out/restart.json" ;;
        profile) run profile 300 python bench/profile_step.py --workdir "$work" --out-dir "$out" --modes "${PROFILE_MODES:-graphs,compiled,eager}" ;;
        batching) run batching 400 python bench/bench_batching.py --workdir "$work" --out "$out/batching.json" ;;
        lowvram) run lowvram 560 python bench/bench_lowvram.py --workdir "$work" --out "$out/lowvram.json" ;;
        tome) run tome 560 python bench/bench_tome_tiled_vae.py --workdir "$work" --out "$out/tome-tiled-vae.json" ;;
        attention) run attention 560 python bench/bench_compile_options.py --family sd15 \
            --settings eager,eager_cudnn,default,cudnn_attention,cudnn_fused --out "$out/compile-options-attention.json" ;;
        options) run options 560 python bench/bench_compile_options.py --family "${OPTIONS_FAMILY:-sd15}" \
            --settings "${OPTIONS_SETTINGS:-default,coordinate,autotune}" --out "$out/compile-options.json" ;;
        imports) run imports 120 python bench/import_profile.py --runs 2 --out "$out/imports.json"
            PYTHONPYCACHEPREFIX=/tmp/pyc run imports-cached 200 python bench/import_profile.py --runs 2 --write-caches \
                --out "$out/imports-cached.json" ;;
        fp8) run fp8 420 python bench/bench_fp8.py --workdir "$work" --out "$out/fp8.json" ;;
        *) echo "unknown stage $stage" ;;
    esac
done
