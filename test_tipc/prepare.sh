#!/usr/bin/env bash
# Prepare a TIPC mode: data made locally from real photos (no downloads), and for whole_infer and
# paddle2onnx_infer weights (the config's pretrained_model_url when it is a local file, else
# trained here).
#   bash test_tipc/prepare.sh test_tipc/configs/MnasNet/MnasNet_B1_x1_0_train_infer_python.txt lite_train_lite_infer
set -eo pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh
FILENAME=$1
MODE=$2
# the PTQ chain (test_ptq_inference_python.sh) runs on whole_infer's data and weights
if [ "$MODE" = "klquant_whole_infer" ]; then MODE=whole_infer; fi
MODES="lite_train_lite_infer lite_train_whole_infer whole_infer whole_train_whole_infer benchmark_train paddle2onnx_infer"
if [ -z "$FILENAME" ] || [[ " $MODES " != *" $MODE "* ]]; then
    echo "usage: bash test_tipc/prepare.sh CONFIG.txt {${MODES// /|}}" >&2
    exit 2
fi
model_name=$(tipc_any "$FILENAME" model_name train_params paddle2onnx_params)
data_dir=$(data_dir_for "$MODE")
if [ "$data_dir" = "test_tipc/data/whole" ]; then
    python test_tipc/make_data.py --out "$data_dir" --train_per_class 40 --val_per_class 10
else
    python test_tipc/make_data.py --out "$data_dir" --train_per_class 8 --val_per_class 2
fi

if [ "$MODE" = "whole_infer" ] || [ "$MODE" = "paddle2onnx_infer" ]; then
    url=$(tipc_any "$FILENAME" pretrained_model_url infer_params export_params)
    weights_dir="test_tipc/data/pretrained/${model_name}"
    if [ -n "$url" ] && [ -f "${url%.pdparams}.pdparams" ]; then
        echo "${MODE}: using the local weights ${url}"
    else
        # No network here: make weights by training one short epoch on the prepared data, at a
        # learning rate low enough that the outputs stay unsaturated (the chains compare scores).
        echo "${MODE}: no local pretrained file (${url:-none}); training weights in ${weights_dir}"
        # an AMP chain config has only amp_train, a paddle2onnx config only norm_export: the YAML
        # is the same (trained here in float32)
        train_cmd=$(tipc_any "$FILENAME" norm_train train_params)
        [ -n "$train_cmd" ] || train_cmd=$(tipc_any "$FILENAME" amp_train train_params)
        [ -n "$train_cmd" ] || train_cmd=$(tipc_any "$FILENAME" norm_export export_params)
        python tools/train.py -c "$(yaml_of "$train_cmd")" -o Global.device=cpu -o Global.epochs=1 \
            -o Global.output_dir="$weights_dir" -o Global.eval_during_train=False -o Optimizer.lr.learning_rate=0.1 \
            -o DataLoader.Train.sampler.batch_size=8 $(data_overrides "$data_dir") \
            $(grep -o -- "-o Arch.name=[^ ]*" <<< "$train_cmd") ${3:+-o Arch.name=$3}
    fi
fi
echo "prepared ${MODE} for ${model_name} in ${data_dir}"
