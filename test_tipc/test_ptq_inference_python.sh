#!/usr/bin/env bash
# TIPC, post-training quantization: export the FP32 model, run the config's kl_quant command
# (deploy/slim/quant_post_static.py), then the predictor sweep on the INT8 model.
#   bash test_tipc/prepare.sh CONFIG_train_ptq_infer_python.txt klquant_whole_infer
#   bash test_tipc/test_ptq_inference_python.sh CONFIG_train_ptq_infer_python.txt klquant_whole_infer
# MODE: klquant_whole_infer (PaddleClas's name) or whole_infer. On CPU with
# enable_mkldnn=True the INT8 model runs with Global.use_int8=True (oneDNN INT8 kernels);
# with enable_mkldnn=False, as in PaddleClas's configs, Paddle runs it without INT8 kernels.
# Outcomes go to test_tipc/output/<model>/<mode>/results_python.log; non-zero exit if any failed.
set -o pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

FILENAME=$1
MODE=$2
if [ ! -f "$FILENAME" ] || [[ " klquant_whole_infer whole_infer " != *" $MODE "* ]]; then
    echo "usage: bash test_tipc/test_ptq_inference_python.sh CONFIG.txt {klquant_whole_infer|whole_infer}" >&2
    exit 2
fi

param() { tipc_value "$FILENAME" "$1" "$2"; }
model_name=$(param train_params model_name)
use_interpreter "$(param train_params python)"
norm_export=$(param infer_params norm_export)
kl_quant=$(param infer_params kl_quant)
infer_model=$(param infer_params infer_model)
pretrained_url=$(param infer_params pretrained_model_url)
inference_cmd=$(param infer_params inference)
use_gpu_list=$(param infer_params "-o Global.use_gpu")
mkldnn_list=$(param infer_params "-o Global.enable_mkldnn")
threads_list=$(param infer_params "-o Global.cpu_num_threads")
batch_list=$(param infer_params "-o Global.batch_size")
benchmark=$(param infer_params "-o Global.benchmark")
if [ -z "$kl_quant" ] || [ "$kl_quant" = "null" ]; then
    echo "${FILENAME} has no kl_quant command in infer_params" >&2
    exit 2
fi

chain_dir="test_tipc/output/${model_name}/${MODE}"
start_chain "$chain_dir" "${chain_dir}/results_python.log" whole_infer
weights=$(weights_for "$model_name" "$pretrained_url")
if [ -z "$weights" ]; then
    echo "no weights for ${model_name}: run bash test_tipc/prepare.sh ${FILENAME} ${MODE} first" >&2
    exit 2
fi
# the config's infer_model folder, kept under the log folder instead of the repository root
model_dir="${LOG_PATH}/$(basename "${infer_model%/}")"

quant_sweep() {
    local quant_dir=$1 use_gpu mkldnn threads batch int8 tag
    for use_gpu in ${use_gpu_list//|/ }; do
        if [ "$use_gpu" = "True" ]; then  # TensorRT INT8: needs a GPU build and a GPU
            has_gpu || { skipped "use_gpu=True needs a GPU" "${inference_cmd} -o Global.use_gpu=True -o Global.use_int8=True" "$status_log" "$model_name"; continue; }
            for batch in ${batch_list//|/ }; do
                run "infer_gpu_int8_batchsize_${batch}" "${python_cmd} deploy/${inference_cmd/-c /-c deploy/} -o Global.use_gpu=True -o Global.use_tensorrt=True -o Global.use_int8=True -o Global.batch_size=${batch} -o Global.inference_model_dir=${quant_dir} -o Global.infer_imgs=${data_dir}/val"
            done
            continue
        fi
        for mkldnn in ${mkldnn_list//|/ }; do
            int8=$([ "$mkldnn" = "True" ] && echo True || echo False)
            for threads in ${threads_list//|/ }; do
                for batch in ${batch_list//|/ }; do
                    tag="cpu_usemkldnn_${mkldnn}_int8_${int8}_threads_${threads}_batchsize_${batch}"
                    run "infer_${tag}" "${python_cmd} deploy/${inference_cmd/-c /-c deploy/} -o Global.use_gpu=False -o Global.enable_mkldnn=${mkldnn} -o Global.use_int8=${int8} -o Global.cpu_num_threads=${threads} -o Global.batch_size=${batch} -o Global.inference_model_dir=${quant_dir} -o Global.infer_imgs=${data_dir}/val -o Global.save_path=${LOG_PATH}/infer_${tag}.json $(set_param -o\ Global.benchmark "$benchmark")"
                done
            done
        done
    done
    # the ONNX Runtime QDQ model written beside it
    run "infer_onnxruntime_qdq" "${python_cmd} deploy/${inference_cmd/-c /-c deploy/} -o Global.use_gpu=False -o Global.use_onnx=True -o Global.use_int8=True -o Global.inference_model_dir=${quant_dir} -o Global.infer_imgs=${data_dir}/val -o Global.save_path=${LOG_PATH}/infer_onnxruntime_qdq.json"
}

# PaddleClas downloads an FP32 inference model here; we export it from the weights.
run "export" "${python_cmd} ${norm_export} -o Global.device=cpu -o Global.pretrained_model=${weights} -o Global.save_inference_dir=${model_dir}" \
    && run "kl_quant" "${python_cmd} ${kl_quant} -o Global.pretrained_model=${weights} -o Global.save_inference_dir=${model_dir} $(data_overrides "$data_dir")" \
    && quant_sweep "${model_dir}/quant_post_static_model"

summary
