#!/usr/bin/env bash
# TIPC: train -> eval -> export -> inference sweep, from a PaddleClas-format config.
#   bash test_tipc/test_train_inference_python.sh CONFIG.txt MODE [MODEL_NAME]
# MODE: lite_train_lite_infer | lite_train_whole_infer | whole_infer | whole_train_whole_infer.
# MODEL_NAME (optional) sets Arch.name, so a config written by PaddleClas for its own models
# runs with one of ours. Every command's outcome goes to
# test_tipc/output/<model>/<mode>/results_python.log; the exit code is non-zero if any failed.
set -o pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

FILENAME=$1
MODE=$2
MODEL_OVERRIDE=${3:-}
MODES="lite_train_lite_infer lite_train_whole_infer whole_infer whole_train_whole_infer"
if [ ! -f "$FILENAME" ] || [[ " $MODES " != *" $MODE "* ]]; then
    echo "usage: bash test_tipc/test_train_inference_python.sh CONFIG.txt {${MODES// /|}} [MODEL_NAME]" >&2
    exit 2
fi

# ------------------------------------------------------------------ the config
param() { tipc_value "$FILENAME" "$1" "$2"; }
model_name=${MODEL_OVERRIDE:-$(param train_params model_name)}
use_interpreter "$(param train_params python)"
gpu_list=$(param train_params gpu_list)
autocast_list=$(param train_params "-o Global.auto_cast")
epochs=$(value_for_mode "$(param train_params "-o Global.epochs")" "$MODE")
batch_size=$(value_for_mode "$(param train_params "-o DataLoader.Train.sampler.batch_size")" "$MODE")
train_pretrained=$(param train_params "-o Global.pretrained_model")
trainer_list=$(param train_params trainer)
norm_train=$(param train_params norm_train)
amp_train=$(param train_params amp_train)
to_static_args=$(param train_params to_static_train)
eval_cmd=$(param eval_params eval)
norm_export=$(param infer_params norm_export)
pretrained_url=$(param infer_params pretrained_model_url)
inference_cmd=$(param infer_params inference)
use_gpu_list=$(param infer_params "-o Global.use_gpu")
mkldnn_list=$(param infer_params "-o Global.enable_mkldnn")
threads_list=$(param infer_params "-o Global.cpu_num_threads")
infer_batch_list=$(param infer_params "-o Global.batch_size")
trt_list=$(param infer_params "-o Global.use_tensorrt")
fp16_list=$(param infer_params "-o Global.use_fp16")
benchmark=$(param infer_params "-o Global.benchmark")

chain_dir="test_tipc/output/${model_name}/${MODE}"
start_chain "$chain_dir" "${chain_dir}/results_python.log" "$MODE"
arch_override=${MODEL_OVERRIDE:+-o Arch.name=${MODEL_OVERRIDE}}
VISIBLE_GPUS=$(visible_gpus)
GPU_AVAILABLE=0
[ "$VISIBLE_GPUS" -gt 0 ] && GPU_AVAILABLE=1

# ------------------------------------------------------------ inference sweep
# infer_sweep MODEL_DIR RUN_NAME: the predictor over the config's settings; GPU-only ones are
# skipped. RUN_NAME keeps the logs of different trainings apart.
infer_sweep() {
    local model_dir=$1 run_name=$2 use_gpu mkldnn threads batch trt fp16 command tag
    for use_gpu in ${use_gpu_list//|/ }; do
        if [ "$use_gpu" = "True" ] && [ $GPU_AVAILABLE -eq 0 ]; then
            skipped "use_gpu=True needs a GPU" "${inference_cmd} -o Global.use_gpu=True" "$status_log" "$model_name"
            continue
        fi
        for batch in ${infer_batch_list//|/ }; do
            if [ "$use_gpu" = "True" ]; then
                for trt in ${trt_list//|/ }; do
                    for fp16 in ${fp16_list//|/ }; do  # fp16 without TensorRT: GPU mixed precision
                        tag="${run_name}_gpu_trt_${trt}_fp16_${fp16}_batchsize_${batch}"
                        command="${python_cmd} deploy/${inference_cmd/-c /-c deploy/} -o Global.use_gpu=True -o Global.use_tensorrt=${trt} -o Global.use_fp16=${fp16} -o Global.batch_size=${batch} -o Global.inference_model_dir=${model_dir} -o Global.infer_imgs=${data_dir}/val $(set_param -o\ Global.benchmark "$benchmark")"
                        run "infer_${tag}" "$command"
                    done
                done
                continue
            fi
            for mkldnn in ${mkldnn_list//|/ }; do
                for threads in ${threads_list//|/ }; do
                    tag="${run_name}_cpu_usemkldnn_${mkldnn}_threads_${threads}_batchsize_${batch}"
                    command="${python_cmd} deploy/${inference_cmd/-c /-c deploy/} -o Global.use_gpu=False -o Global.enable_mkldnn=${mkldnn} -o Global.cpu_num_threads=${threads} -o Global.batch_size=${batch} -o Global.inference_model_dir=${model_dir} -o Global.infer_imgs=${data_dir}/val -o Global.save_path=${LOG_PATH}/infer_${tag}.json $(set_param -o\ Global.benchmark "$benchmark")"
                    run "infer_${tag}" "$command"
                done
            done
            if [[ "$fp16_list" == *True* ]]; then
                skipped "use_fp16=True runs on GPUs here" "${inference_cmd} -o Global.use_fp16=True -o Global.batch_size=${batch}" "$status_log" "$model_name"
            fi
        done
    done
}

# export_and_infer WEIGHTS OUT_DIR
export_and_infer() {
    local weights=$1 out=$2
    run "export_$(basename "$out")" "${python_cmd} ${norm_export} -o Global.device=cpu -o Global.pretrained_model=${weights} -o Global.save_inference_dir=${out}/inference ${arch_override}" \
        && infer_sweep "${out}/inference" "$(basename "$out")"
}

# ------------------------------------------------------------------ the chain
if [ "$MODE" = "whole_infer" ]; then
    weights=$(weights_for "$model_name" "$pretrained_url")
    if [ -z "$weights" ]; then
        echo "whole_infer needs weights: run bash test_tipc/prepare.sh ${FILENAME} whole_infer first" >&2
        exit 2
    fi
    export_and_infer "$weights" "${LOG_PATH}/whole_infer"
else
    for gpu in ${gpu_list//|/ }; do
        read -r device nproc <<< "$(gpu_entry "$gpu" "$VISIBLE_GPUS")"
        if [ "$device" = "skip" ]; then
            skipped "$nproc" "${norm_train:-$amp_train} --gpus=${gpu}" "$status_log" "$model_name"
            continue
        elif [ "$device" = "cpu" ]; then
            launcher=$([ "$nproc" -gt 1 ] && echo "-m paddle.distributed.launch --log_dir ${LOG_PATH}/launch --nproc_per_node ${nproc}")
        else
            launcher=$([ "$nproc" -gt 1 ] && echo "-m paddle.distributed.launch --log_dir ${LOG_PATH}/launch --gpus=${gpu}")
        fi
        for autocast in ${autocast_list//|/ }; do
            # PaddleClas's values: amp is AMP O1, fp16 is AMP O2.
            amp_args=""
            case "$autocast" in
                amp) amp_args="-o AMP.use_amp=True -o AMP.level=O1" ;;
                fp16) amp_args="-o AMP.use_amp=True -o AMP.level=O2" ;;
            esac
            if [ -n "$amp_args" ] && [ "$device" = "cpu" ]; then
                skipped "AMP (auto_cast ${autocast}) needs a GPU" "${norm_train} ${amp_args}" "$status_log" "$model_name"
                continue
            fi
            for trainer in ${trainer_list//|/ }; do
                case "$trainer" in
                    norm_train) train_cmd=$norm_train extra="" ;;
                    to_static_train) train_cmd=$norm_train extra=$to_static_args ;;
                    amp_train) train_cmd=$amp_train extra="" ;;
                    *) skipped "trainer ${trainer} is not provided" "$trainer" "$status_log" "$model_name"
                       continue ;;
                esac
                if [ "$trainer" = "amp_train" ] && [ "$device" = "cpu" ]; then
                    skipped "amp_train needs a GPU (AMP trains in float16 on GPUs only)" "$amp_train" "$status_log" "$model_name"
                    continue
                fi
                out="${LOG_PATH}/${trainer}_gpus_${gpu//,/-}_autocast_${autocast}"
                run "train_$(basename "$out")" "${python_cmd} ${launcher:+$launcher --log_dir ${out}/dist_log} ${train_cmd} ${extra} ${amp_args} -o Global.device=${device} -o Global.epochs=${epochs} -o Global.output_dir=${out} $(set_param -o\ DataLoader.Train.sampler.batch_size "$batch_size") $(set_param -o\ Global.pretrained_model "$train_pretrained") $(data_overrides "$data_dir") ${arch_override}" || continue
                weights="${out}/${model_name}/latest"
                # on the training's device and at its AMP level: O2 evaluates under autocast
                run "eval_$(basename "$out")" "${python_cmd} ${eval_cmd} -o Global.device=${device} $(amp_overrides "${train_cmd} ${amp_args}") -o Global.pretrained_model=${weights} $(data_overrides "$data_dir") ${arch_override}"
                export_and_infer "$weights" "$out"
            done
        done
    done
fi

summary
