#!/usr/bin/env bash
# TIPC: export -> paddle2onnx -> the predictor on ONNX Runtime, from a PaddleClas-format
# *_paddle2onnx_python_linux_cpu.txt.
#   bash test_tipc/test_paddle2onnx.sh CONFIG.txt [paddle2onnx_infer]
# The paddle2onnx_params section is PaddleClas's (its 16 lines, in its order). Our configs add an
# export_params section (norm_export, pretrained_model_url): the model is exported here from the
# weights prepare.sh made, where PaddleClas downloads an exported model. A config without it
# converts whatever --model_dir holds. The predictor runs on the lite val images twice, on
# ONNX Runtime (Global.use_onnx=True) and on Paddle Inference, and the two results must agree
# (test_tipc/compare_runs.py predictions). Outcomes go to
# test_tipc/output/<model>/paddle2onnx_infer/results_paddle2onnx.log.
set -o pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

FILENAME=$1
MODE=${2:-paddle2onnx_infer}
if [ ! -f "$FILENAME" ] || [ "$MODE" != "paddle2onnx_infer" ]; then
    echo "usage: bash test_tipc/test_paddle2onnx.sh CONFIG.txt [paddle2onnx_infer]" >&2
    exit 2
fi
param() { tipc_value "$FILENAME" paddle2onnx_params "$1"; }
model_name=$(param model_name)
use_interpreter "$(param python)"
convert=$(param 2onnx)
model_dir=$(param --model_dir)
model_dir=${model_dir%/}
inference_py=$(param inference)
use_onnx=$(param Global.use_onnx)
inference_model_dir=$(param Global.inference_model_dir)
use_gpu=$(param Global.use_gpu)
deploy_yaml=$(param -c)
norm_export=$(tipc_value "$FILENAME" export_params norm_export)
pretrained_url=$(tipc_value "$FILENAME" export_params pretrained_model_url)

chain_dir="test_tipc/output/${model_name}/${MODE}"
start_chain "$chain_dir" "${chain_dir}/results_paddle2onnx.log" "$MODE"

# in_deploy PATH: PaddleClas runs the predictor from deploy/, so its config gives the script,
# the deploy yaml and the model folder relative to deploy/; we run from the repository root.
in_deploy() {
    case $1 in
        /* | deploy/* | ./deploy/*) echo "$1" ;;
        *) echo "deploy/${1#./}" ;;
    esac
}

# 1. export (our configs), 2. conversion with PaddleClas's paddle2onnx arguments
if [ -n "$norm_export" ] && [ "$norm_export" != "null" ]; then
    weights=$(weights_for "$model_name" "$pretrained_url")
    if [ -z "$weights" ]; then
        echo "no weights for ${model_name}: run bash test_tipc/prepare.sh ${FILENAME} ${MODE} first" >&2
        exit 2
    fi
    run export "${python_cmd} ${norm_export} -o Global.device=cpu -o Global.pretrained_model=${weights} -o Global.save_inference_dir=${model_dir}"
fi
convert_args=""
for key in --model_dir --model_filename --params_filename --save_file --opset_version --enable_onnx_checker; do
    convert_args+=" $(set_param "$key" "$(param "$key")" | sed 's/=/ /')"
done
run paddle2onnx "${convert}${convert_args}"

# 3. the predictor on ONNX Runtime, then on Paddle Inference, and the two compared
if [ "$use_gpu" = "True" ] && ! has_gpu; then
    skipped "use_gpu=True needs a GPU" "${inference_py} -o Global.use_gpu=True" "$status_log" "$model_name"
else
    predict="${python_cmd} $(in_deploy "$inference_py") -c $(in_deploy "$deploy_yaml")
        -o Global.inference_model_dir=$(in_deploy "$inference_model_dir") -o Global.use_gpu=${use_gpu:-False}
        -o Global.infer_imgs=${data_dir}/val"
    predict=${predict//$'\n'/ }
    run infer_onnx "${predict} -o Global.use_onnx=${use_onnx:-True} -o Global.save_path=${LOG_PATH}/onnx.json" \
        && run infer_paddle "${predict} -o Global.use_onnx=False -o Global.save_path=${LOG_PATH}/paddle.json" \
        && run compare_predictions "${python_cmd} test_tipc/compare_runs.py predictions ${LOG_PATH}/paddle.json ${LOG_PATH}/onnx.json --atol 1e-4"
fi
summary
