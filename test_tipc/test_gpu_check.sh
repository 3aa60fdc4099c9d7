#!/usr/bin/env bash
# TIPC: the one-GPU check chain. What to run first on a machine with one GPU and
# paddlepaddle-gpu (a few minutes on the lite data):
#   bash test_tipc/prepare.sh test_tipc/configs/MnasNet/MnasNet_B1_x0_5_gpu_check.txt lite_train_lite_infer
#   bash test_tipc/test_gpu_check.sh test_tipc/configs/MnasNet/MnasNet_B1_x0_5_gpu_check.txt [gpu|cpu]
# On the GPU (the default, from the config's Global.device):
#   1. AMP O1 and O2 trainings with EMA, Mixup and 2 loader workers (uint8 batches, normalised
#      on the device), evaluated every epoch; tools/eval.py on the GPU at the same AMP level must
#      give the training's last evaluation exactly (compare_runs.py evals: k/n counts);
#   2. an O2 training (without loader workers) killed (SIGKILL, test_tipc/crash_at.py) at a known step after
#      Global.save_latest_steps saved `latest`, resumed: its losses from the resumed step on and
#      its last evaluation against the uninterrupted O2 run (GPU kernels with atomics are not
#      bit-reproducible: losses within resume_rtol_gpu, counts within resume_max_diff_gpu images);
#      the same checkpoint resumed at AMP O1;
#   3. export of the O2 weights, the Paddle Inference predictor on the GPU against tools/infer.py
#      (same top-1, probabilities within atol_gpu), then use_fp16 (GPU mixed precision) and
#      use_tensorrt (fp32, fp16): each either agrees with the fp32 predictor (atol_fp16) or is
#      refused with one line and exit code 2;
#   4. SyncBatchNorm on one GPU (Arch.use_sync_bn=True);
#   5. data parallel on each gpu_list entry of several cards (0,1: 2 GPUs, O1) when those cards
#      are visible, else a skip line; its last evaluation against tools/eval.py on one GPU.
# With "cpu" everything runs in float32 on the CPU: one training replaces O1 and O2, the resume
# must match exactly (every loss to the log's last digit, the same counts), the GPU keys of the
# predictor must be refused in one line, and the GPU-only steps are Skipped (reason) lines.
# Outcomes: test_tipc/output/<model>/gpu_check_<device>/results_gpu_check.log; the exit code is
# non-zero if anything failed.
set -o pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

FILENAME=$1
MODE=lite_train_lite_infer  # the data prepare.sh makes for it
param() { tipc_value "$FILENAME" "$1" "$2"; }
DEVICE=${2:-$(param train_params "-o Global.device")}
if [ ! -f "$FILENAME" ] || [[ " gpu cpu " != *" $DEVICE "* ]]; then
    echo "usage: bash test_tipc/test_gpu_check.sh CONFIG.txt [gpu|cpu]" >&2
    exit 2
fi
VISIBLE_GPUS=$(visible_gpus)
if [ "$DEVICE" = "gpu" ] && [ "$VISIBLE_GPUS" -eq 0 ]; then
    echo "no GPU visible to Paddle (paddlepaddle-gpu not installed, or CUDA_VISIBLE_DEVICES empty):" \
         "run bash test_tipc/test_gpu_check.sh ${FILENAME} cpu for the CPU check" >&2
    exit 2
fi

model_name=$(param train_params model_name)
use_interpreter "$(param train_params python)"
epochs=$(param train_params "-o Global.epochs")
batch_size=$(param train_params "-o DataLoader.Train.sampler.batch_size")
save_latest_steps=$(param train_params "-o Global.save_latest_steps")
read -r crash_epoch crash_iter <<< "$(param train_params crash_at)"
amp_levels=$(param train_params amp_levels)
train_cmd=$(param train_params train)
amp_args=$(param train_params amp)
sync_bn_args=$(param train_params sync_bn)
eval_cmd=$(param eval_params eval)
export_cmd=$(param infer_params norm_export)
infer_cmd=$(param infer_params infer)
inference_cmd=$(param infer_params inference)

chain_dir="test_tipc/output/${model_name}/gpu_check_${DEVICE}"
rm -rf "$chain_dir"  # train.log files append: a previous check's lines must not be compared
start_chain "$chain_dir" "${chain_dir}/results_gpu_check.log" "$MODE"
echo "one-GPU check chain on ${DEVICE} (${VISIBLE_GPUS} GPU(s) visible to Paddle)"
data="$(data_paths "$data_dir")"
labels="${data_dir}/label_list.txt"
if [ "$DEVICE" = "gpu" ]; then
    export FLAGS_cudnn_deterministic=1  # cuDNN's deterministic algorithms: fewer differences to explain
    levels=${amp_levels//|/ }
    resume_rtol=$(param train_params resume_rtol_gpu)
    resume_max_diff=$(param train_params resume_max_diff_gpu)
    atol=$(param infer_params atol_gpu)
else
    levels=fp32  # AMP trains in float16 on GPUs only
    resume_rtol=1e-6  # with compare_runs.py's abs_tol 1e-5: equal to the log's last digit
    resume_max_diff=0
    atol=$(param infer_params atol_cpu)
fi
atol_fp16=$(param infer_params atol_fp16)

# training LEVEL -> the overrides of one training at an AMP level (fp32: none)
training() {
    local level=$1
    echo "${train_cmd} -o Global.device=${DEVICE} -o Global.epochs=${epochs}" \
         "-o DataLoader.Train.sampler.batch_size=${batch_size} -o Global.save_latest_steps=${save_latest_steps}" \
         "$([ "$level" != fp32 ] && echo "${amp_args} -o AMP.level=${level}") ${data}"
}

# evaluation LEVEL WEIGHTS -> tools/eval.py of WEIGHTS on the device at that AMP level
evaluation() {
    echo "${python_cmd} ${eval_cmd} -o Global.device=${DEVICE}" \
         "$([ "$1" != fp32 ] && echo "${amp_args} -o AMP.level=$1") -o Global.pretrained_model=$2 ${data}"
}

# ------------------------------------------------- 1. trainings, each checked against tools/eval.py
for level in $levels; do
    out="${LOG_PATH}/train_${level}"
    run "train_${level}" "${python_cmd} $(training "$level") -o Global.output_dir=${out}" || continue
    run "eval_${level}" "$(evaluation "$level" "${out}/${model_name}/latest")" \
        && run "compare_eval_${level}" "${python_cmd} test_tipc/compare_runs.py evals ${out}/${model_name}/train.log ${LOG_PATH}/eval_${level}.log"
done
last=${levels##* }  # O2 on the GPU: what the resume, export and predictor steps use
trained="${LOG_PATH}/train_${last}/${model_name}"

# ------------------------------------------------- 2. a crash mid-run, resumed
crashed="${LOG_PATH}/crash_${last}"
crash_args=$(training "$last")
crash_args=${crash_args#tools/train.py}  # crash_at.py runs tools/train.py's main itself
# Loaded in the training process: a SIGKILL leaves the loader's worker processes (blocked on their
# pipe) and their in-flight shared-memory batches behind. Batches do not depend on num_workers,
# so the resume (with 2 workers) must still equal the uninterrupted run.
crash_args+=" -o DataLoader.Train.loader.num_workers=0 -o DataLoader.Eval.loader.num_workers=0"
# SIGKILL is exit code 137: anything else (no crash, an error) fails the step
if run "crash_${last}" "${python_cmd} test_tipc/crash_at.py ${crash_epoch} ${crash_iter} ${crash_args} -o Global.output_dir=${crashed}; test \$? -eq 137"; then
    cp -r "$crashed" "${crashed}_at_O1"  # the same checkpoint for the AMP-level change below
    run "resume_${last}" "${python_cmd} $(training "$last") -o Global.output_dir=${crashed} -o Global.checkpoints=${crashed}/${model_name}/latest" \
        && run "compare_resume_losses_${last}" "${python_cmd} test_tipc/compare_runs.py losses ${trained}/train.log ${LOG_PATH}/resume_${last}.log --resumed --rtol ${resume_rtol}" \
        && run "compare_resume_eval_${last}" "${python_cmd} test_tipc/compare_runs.py evals ${trained}/train.log ${LOG_PATH}/resume_${last}.log --max_diff ${resume_max_diff}"
    if [ "$last" = "O2" ]; then
        run "resume_O2_at_O1" "${python_cmd} $(training O1) -o Global.output_dir=${crashed}_at_O1 -o Global.checkpoints=${crashed}_at_O1/${model_name}/latest"
    else
        skipped "resuming at another AMP level needs a GPU (AMP)" "tools/train.py ... -o AMP.level=O1 -o Global.checkpoints=${crashed}_at_O1/..." "$status_log" "$model_name"
    fi
fi

# ------------------------------------------------- 3. export, dygraph and the predictor
model_dir="${LOG_PATH}/inference"
predict="${python_cmd} deploy/${inference_cmd/-c /-c deploy/} -o Global.inference_model_dir=${model_dir} -o Global.infer_imgs=${data_dir}/val"
use_gpu=$([ "$DEVICE" = gpu ] && echo True || echo False)

# refused_or_agrees NAME OVERRIDES: the predictor with OVERRIDES either agrees with the fp32
# predictor within atol_fp16, or exits 2 with one "error:" line (a CPU build refuses GPU keys)
refused_or_agrees() {
    local out="${LOG_PATH}/$1.json" err="${LOG_PATH}/$1.stderr" code
    eval "${predict} $2 -o Global.save_path=${out}" 2> "$err"
    code=$?
    if [ $code -eq 0 ]; then
        ${python_cmd} test_tipc/compare_runs.py predictions "${LOG_PATH}/predictor_fp32.json" "$out" --atol "$atol_fp16"
    elif [ $code -eq 2 ] && [ "$(grep -c '^error: ' "$err")" -eq 1 ] && ! grep -q Traceback "$err"; then
        echo "refused in one line: $(grep '^error: ' "$err")"
    else
        cat "$err"
        return 1
    fi
}

if run export "${python_cmd} ${export_cmd} -o Global.device=${DEVICE} -o Global.pretrained_model=${trained}/latest -o Global.save_inference_dir=${model_dir} -o Infer.PostProcess.class_id_map_file=${labels}"; then
    run dygraph "${python_cmd} ${infer_cmd} -o Global.device=${DEVICE} -o Global.pretrained_model=${trained}/latest -o Infer.infer_imgs=${data_dir}/val -o Infer.PostProcess.class_id_map_file=${labels} -o Infer.save_path=${LOG_PATH}/dygraph.json" \
        && run predictor_fp32 "${predict} -o Global.use_gpu=${use_gpu} -o Global.save_path=${LOG_PATH}/predictor_fp32.json" \
        && run compare_predictor_dygraph "${python_cmd} test_tipc/compare_runs.py predictions ${LOG_PATH}/dygraph.json ${LOG_PATH}/predictor_fp32.json --same_top1 --atol ${atol}" \
        && for variant in "fp16:-o Global.use_fp16=True" "tensorrt_fp32:-o Global.use_tensorrt=True" \
                          "tensorrt_fp16:-o Global.use_tensorrt=True -o Global.use_fp16=True"; do
            run "predictor_${variant%%:*}" "refused_or_agrees predictor_${variant%%:*} '-o Global.use_gpu=True ${variant#*:}'"
        done
fi

# ------------------------------------------------- 4. SyncBatchNorm, 5. data parallel on the gpu_list entries of several cards
if [ "$DEVICE" = "gpu" ]; then
    out="${LOG_PATH}/sync_bn"
    run sync_bn "${python_cmd} $(training O1) ${sync_bn_args} -o Global.epochs=1 -o Global.output_dir=${out} && ! grep -q 'use_sync_bn is ignored' ${out}/${model_name}/train.log"
else
    skipped "SyncBatchNorm needs a GPU" "tools/train.py ... ${sync_bn_args}" "$status_log" "$model_name"
fi
for entry in $(param train_params gpu_list | tr '|' ' '); do
    [[ "$entry" == *,* ]] || continue  # one card: the steps above
    how="skip" detail="needs GPUs; this is the CPU check"
    [ "$DEVICE" = "gpu" ] && read -r how detail <<< "$(gpu_entry "$entry" "$VISIBLE_GPUS")"
    out="${LOG_PATH}/gpus_${entry//,/_}"
    if [ "$how" != "gpu" ]; then
        skipped "data parallel on GPUs ${entry}: ${detail}" "python -m paddle.distributed.launch --gpus=${entry} tools/train.py ..." "$status_log" "$model_name"
        continue
    fi
    run "train_gpus_${entry//,/_}" "${python_cmd} -m paddle.distributed.launch --log_dir ${out}/dist_log --gpus=${entry} $(training O1) -o Global.output_dir=${out}" \
        && run "eval_gpus_${entry//,/_}" "$(evaluation O1 "${out}/${model_name}/latest")" \
        && run "compare_eval_gpus_${entry//,/_}" "${python_cmd} test_tipc/compare_runs.py evals ${out}/${model_name}/train.log ${LOG_PATH}/eval_gpus_${entry//,/_}.log"
done

summary
