#!/usr/bin/env bash
# TIPC: dygraph and to_static training compared loss by loss.
#   bash test_tipc/test_train_dy2static_python.sh CONFIG.txt [MODEL_NAME]
# CONFIG is a *_train_infer_python.txt (or PaddleClas's *_train_dy2static_python.txt, whose
# section is base_train). Both trainings run norm_train on the lite data in one CPU process with
# every iteration logged; the to_static one adds the config's to_static_train arguments. The
# logged losses must agree step by step within a relative 1e-4 (test_tipc/compare_runs.py).
# The dygraph run uses Paddle's built-in depthwise convolution (PPCLS_DEPTHWISE_CONV=builtin),
# the operator a to_static graph runs, so the two differ only by the dygraph-to-static
# conversion; with our custom kernel the float rounding differs and losses drift apart by
# ~1e-3 after a few steps, which would hide a real conversion error of that size.
set -o pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

FILENAME=$1
MODEL_OVERRIDE=${2:-}
MODE=lite_train_lite_infer
if [ ! -f "$FILENAME" ]; then
    echo "usage: bash test_tipc/test_train_dy2static_python.sh CONFIG.txt [MODEL_NAME]" >&2
    exit 2
fi
param() { tipc_any "$FILENAME" "$1" train_params base_train; }
model_name=${MODEL_OVERRIDE:-$(param model_name)}
use_interpreter "$(param python)"
norm_train=$(param norm_train)
to_static_args=$(param to_static_train)
epochs=$(value_for_mode "$(param "-o Global.epochs")" "$MODE")
batch_size=$(value_for_mode "$(param "-o DataLoader.Train.sampler.batch_size")" "$MODE")
train_pretrained=$(param "-o Global.pretrained_model")
if [ -z "$norm_train" ] || [ -z "$to_static_args" ] || [ "$to_static_args" = "null" ]; then
    echo "${FILENAME}: the dy2static check needs norm_train and to_static_train lines" >&2
    exit 2
fi

chain_dir="test_tipc/output/${model_name}/dy2static"
start_chain "$chain_dir" "${chain_dir}/results_python.log" "$MODE"

train_args="-o Global.device=cpu -o Global.epochs=${epochs} -o Global.print_batch_step=1
    -o Global.eval_during_train=False $(set_param -o\ DataLoader.Train.sampler.batch_size "$batch_size")
    $(set_param -o\ Global.pretrained_model "$train_pretrained") $(data_overrides "$data_dir")
    ${MODEL_OVERRIDE:+-o Arch.name=${MODEL_OVERRIDE}}"
train_args=${train_args//$'\n'/ }
run train_dygraph "PPCLS_DEPTHWISE_CONV=builtin ${python_cmd} ${norm_train} ${train_args} -o Global.output_dir=${LOG_PATH}/dygraph"
run train_to_static "${python_cmd} ${norm_train} ${to_static_args} ${train_args} -o Global.output_dir=${LOG_PATH}/to_static"
run compare_losses "${python_cmd} test_tipc/compare_runs.py losses ${LOG_PATH}/train_dygraph.log ${LOG_PATH}/train_to_static.log --rtol 1e-4"
grep -E "error:|agree" "${LOG_PATH}/compare_losses.log"
summary
