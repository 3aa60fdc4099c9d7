#!/usr/bin/env bash
# TIPC: training speed (ips, samples/s) from the train_benchmark_params section of a
# *_train_infer_python.txt.
#   bash test_tipc/benchmark_train.sh CONFIG.txt benchmark_train [PARAMS]
# PARAMS is PaddleClas's run name, {dynamic|dynamicTostatic}_bs{N}_{fp32|fp16}_{DP}_N{n}C{c},
# e.g. dynamic_bs32_fp32_DP_N1C1: one run of it. Without PARAMS every batch_size x fp_items x
# model_type of the section runs on N1C1. Each run trains the section's epochs on the
# benchmark_train data with every iteration logged, and its ips is the mean of the logged ips
# after the first 2 iterations, times the processes (tools/train_log_stats.py --ips), as
# PaddleClas's benchmark reads its logs. Logs: train_log/, figures: index/ (JSON), under
# $BENCHMARK_LOG_DIR or test_tipc/output/<model>/benchmark_train.
# On CPU, fp16 runs and --profiler_options are skipped with a line each; N1Cc trains in c CPU
# processes. The config's flags are exported (FLAGS_* of Paddle).
set -o pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

FILENAME=$1
MODE=$2
PARAMS=${3:-}
if [ ! -f "$FILENAME" ] || [ "$MODE" != "benchmark_train" ]; then
    echo "usage: bash test_tipc/benchmark_train.sh CONFIG.txt benchmark_train [PARAMS, e.g. dynamic_bs32_fp32_DP_N1C1]" >&2
    exit 2
fi
bench() { tipc_value "$FILENAME" train_benchmark_params "$1"; }
param() { tipc_value "$FILENAME" train_params "$1"; }
model_name=$(param model_name)
use_interpreter "$(param python)"
norm_train=$(param norm_train)
to_static_args=$(param to_static_train)
batch_sizes=$(bench batch_size)
fp_items=$(bench fp_items)
epochs=$(bench epoch)
model_types=$(bench model_type)
num_workers=$(bench num_workers)
profiler_options=$(bench --profiler_options)
flags=$(bench flags)
if [ -z "$batch_sizes" ] || [ -z "$norm_train" ]; then
    echo "${FILENAME}: no train_benchmark_params section (batch_size, fp_items, epoch, ...) or no norm_train" >&2
    exit 2
fi

SAVE_LOG=${BENCHMARK_LOG_DIR:-test_tipc/output/${model_name}/benchmark_train}
mkdir -p "${SAVE_LOG}/index"
start_chain "${SAVE_LOG}/train_log" "${SAVE_LOG}/results.log" "$MODE"
VISIBLE_GPUS=$(visible_gpus)
IFS=';' read -ra flag_list <<< "${flags/null/}"
for flag in "${flag_list[@]}"; do export "${flag?}"; done

if [ -n "$PARAMS" ]; then
    IFS='_' read -r model_type batch_size precision run_mode device_num <<< "$PARAMS"
    [ "$model_type" = "dynamicTostatic" ] && model_types=to_static_train || model_types=norm_train
    batch_sizes=${batch_size//[!0-9]/}
    fp_items=${precision/null/fp32}
    device_nums=$device_num
else
    run_mode=DP
    device_nums=N1C1
    model_types=${model_types:-norm_train}
fi
if [ -n "$profiler_options" ] && [ "$profiler_options" != "null" ]; then
    skipped "--profiler_options: the engine has no profiler hook; the timed runs below are unprofiled" \
        "--profiler_options ${profiler_options}" "$status_log" "$model_name"
fi

# one_run TRAINER BATCH PRECISION DEVICE_NUM
one_run() {
    local trainer=$1 batch=$2 precision=$3 devices=$4 extra="" amp_args="" tag nproc launcher device
    [ "$trainer" = "to_static_train" ] && extra=$to_static_args
    case "$precision" in
        fp32) ;;
        amp) amp_args="-o AMP.use_amp=True -o AMP.level=O1" ;;
        fp16) amp_args="-o AMP.use_amp=True -o AMP.level=O2" ;;
        *) skipped "fp_item ${precision} is not one of fp32|amp|fp16" "$precision" "$status_log" "$model_name"
           return ;;
    esac
    nproc=${devices#*C}
    tag="$(basename "$PWD")_${model_name}_bs${batch}_${precision}_${run_mode}_${devices}_$([ "$trainer" = "to_static_train" ] && echo d2sT_)"
    local cards detail
    cards=$(seq -s, 0 $((nproc - 1)))
    read -r device detail <<< "$(gpu_entry "$cards" "$VISIBLE_GPUS")"
    if [ "$device" = "skip" ]; then
        skipped "$detail" "${tag}: ${norm_train} ${amp_args} --gpus=${cards}" "$status_log" "$model_name"
        return
    elif [ "$device" = "gpu" ]; then
        launcher=$([ "$nproc" -gt 1 ] && echo "-m paddle.distributed.launch --log_dir ${SAVE_LOG}/dist_${tag} --gpus=${cards}")
    else
        if [ -n "$amp_args" ]; then
            skipped "${precision} (AMP) needs a GPU" "${tag}: ${norm_train} ${amp_args}" "$status_log" "$model_name"
            return
        fi
        launcher=$([ "$nproc" -gt 1 ] && echo "-m paddle.distributed.launch --log_dir ${SAVE_LOG}/dist_${tag} --nproc_per_node ${nproc}")
    fi
    local out="${SAVE_LOG}/${tag}output"
    rm -rf "$out"  # train.log appends: an earlier run's iterations must not count
    run "${tag}log" "${python_cmd} ${launcher} ${norm_train} ${extra} ${amp_args} -o Global.device=${device} -o Global.epochs=${epochs:-1} -o DataLoader.Train.sampler.batch_size=${batch} -o Global.print_batch_step=1 -o Global.eval_during_train=False -o Global.output_dir=${out} $(data_overrides "$data_dir") $(set_param -o\ DataLoader.Train.loader.num_workers "$num_workers")" || return
    run "${tag}speed" "${python_cmd} tools/train_log_stats.py --ips --skip_steps 2 --device_num ${nproc} --speed_log_file ${SAVE_LOG}/index/${tag}speed ${out}/${model_name}/train.log" \
        && grep "^ips:" "${LOG_PATH}/${tag}speed.log"
}

for trainer in ${model_types//|/ }; do
    for batch in ${batch_sizes//|/ }; do
        for precision in ${fp_items//|/ }; do
            for devices in ${device_nums//|/ }; do
                one_run "$trainer" "$batch" "$precision" "$devices"
            done
        done
    done
done
summary
