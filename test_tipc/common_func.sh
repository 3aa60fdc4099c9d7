#!/usr/bin/env bash
# Helpers shared by the TIPC scripts. A TIPC config (test_tipc/configs/*/*.txt)
# is PaddleClas's line format: "key:value" lines grouped in sections headed "===...xxx_params===".
# Keys are looked up by name within a section, so lines may move without breaking anything.

# tipc_value FILE SECTION KEY -> the value after the first ':' (empty if the key is absent)
tipc_value() {
    awk -v section="$2" -v key="$3" '
        /^=+/ { inside = index($0, section) > 0; next }
        inside {
            i = index($0, ":")
            if (i > 0 && substr($0, 1, i - 1) == key) { print substr($0, i + 1); exit }
        }' "$1"
}

# tipc_any FILE KEY SECTION... -> the value of KEY in the first SECTION that has it (the chains'
# configs name their sections differently: train_params, paddle2onnx_params, export_params, ...)
tipc_any() {
    local file=$1 key=$2 section value
    shift 2
    for section in "$@"; do
        value=$(tipc_value "$file" "$section" "$key")
        if [ -n "$value" ]; then echo "$value"; return; fi
    done
}

# value_for_mode VALUE MODE: "lite_train_lite_infer=2|whole_train_whole_infer=120" -> the
# entry for MODE; a value without '=' is returned as it is.
value_for_mode() {
    local value=$1 mode=$2 item
    if [[ "$value" != *"="* ]]; then echo "$value"; return; fi
    IFS='|' read -ra items <<< "$value"
    for item in "${items[@]}"; do
        if [ "${item%%=*}" = "$mode" ]; then echo "${item#*=}"; return; fi
    done
    echo "${items[0]#*=}"
}

# set_param KEY VALUE -> "KEY=VALUE", or nothing when either is null/empty
set_param() {
    local key=$1 value=$2
    if [ -z "$key" ] || [ "$key" = "null" ] || [ -z "$value" ] || [ "$value" = "null" ]; then
        return
    fi
    echo "${key}=${value}"
}

# status_check EXIT_CODE COMMAND LOG_FILE MODEL [RUN_LOG]: records the outcome line
status_check() {
    local code=$1 command=$2 log_file=$3 model=$4 run_log=${5:-}
    if [ "$code" -eq 0 ]; then
        echo " Run successfully with command - ${model} - ${command}!" | tee -a "$log_file"
    else
        echo " Run failed with command - ${model} - ${command}!" | tee -a "$log_file"
        if [ -n "$run_log" ] && [ -f "$run_log" ]; then tail -n 20 "$run_log"; fi
    fi
}

# skipped REASON COMMAND LOG_FILE MODEL: a command this machine cannot run (e.g. no GPU)
skipped() {
    echo " Skipped ($1) - ${4} - ${2}" | tee -a "$3"
}

# use_interpreter NAME: sets python_cmd to NAME when it runs here, else to "python" with one
# line saying so (upstream configs name python3.7; running it, not `command -v`, because a pyenv
# shim exists for versions that are not installed).
use_interpreter() {
    python_cmd=$1
    if [ -z "$1" ] || [ "$1" = "null" ] || ! "$1" -c "" > /dev/null 2>&1; then
        echo "the config's interpreter ${1:-(none)} is not installed: running with $(command -v python)"
        python_cmd=python
    fi
}

# run NAME COMMAND: runs COMMAND with its output in LOG_PATH/NAME.log and records the outcome
# in status_log for model_name; counts a failure in failures (the callers' globals).
run() {
    local name=$1 command
    command=$(tr -s ' ' <<< "$2")
    echo "+ ${command}" > "${LOG_PATH}/${name}.log"
    eval "$command" >> "${LOG_PATH}/${name}.log" 2>&1
    local code=$?
    status_check $code "$command" "$status_log" "$model_name" "${LOG_PATH}/${name}.log"
    [ $code -eq 0 ] || failures=$((failures + 1))
    return $code
}

# summary: the last lines of every chain; the exit status is non-zero if anything failed
summary() {
    echo "results: ${status_log}"
    echo "TIPC: $(grep -c 'Run successfully' "$status_log") passed, ${failures} failed"
    [ "$failures" -eq 0 ]
}

# visible_gpus -> how many GPUs Paddle can use here: 0 without a CUDA build, else
# paddle.device.cuda.device_count(), which CUDA_VISIBLE_DEVICES limits
visible_gpus() {
    python -c "import paddle; print(paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0)" 2>/dev/null || echo 0
}

has_gpu() {
    [ "$(visible_gpus)" -gt 0 ]
}

# gpu_entry ENTRY VISIBLE -> how a gpu_list entry ("0", "0,1", "-1") runs when VISIBLE GPUs are
# visible: "gpu N" (N processes on those cards), "cpu N" (no GPU visible, or -1: N CPU processes
# over gloo), or "skip REASON" when it names a card that is not there.
gpu_entry() {
    local entry=$1 visible=$2 id count
    count=$(( $(tr -cd ',' <<< "$entry" | wc -c) + 1 ))
    if [ "$entry" = "-1" ] || [ "$visible" -eq 0 ]; then echo "cpu ${count}"; return; fi
    for id in ${entry//,/ }; do
        if [ "$id" -ge "$visible" ]; then
            echo "skip gpu_list ${entry} needs ${count} GPUs (card ${id}); ${visible} visible"
            return
        fi
    done
    echo "gpu ${count}"
}

# amp_overrides COMMAND -> its "-o AMP.x=y" arguments (eval must autocast as training did)
amp_overrides() {
    grep -o -- "-o AMP\.[^ ]*" <<< "$1" | tr '\n' ' '
}

# weights_for MODEL URL -> the weights prefix for the chains that start from weights: URL when it
# names a local .pdparams file, else what prepare.sh trained (empty when neither exists)
weights_for() {
    local url=$2 found
    if [ -n "$url" ] && [ -f "${url%.pdparams}.pdparams" ]; then echo "${url%.pdparams}"; return; fi
    found=$(ls test_tipc/data/pretrained/"$1"/*/latest.pdparams 2> /dev/null | head -n 1)
    echo "${found%.pdparams}"
}

# yaml_of COMMAND -> the path after "-c" in a "tools/train.py -c X.yaml ..." command
yaml_of() {
    local -a words
    read -ra words <<< "$1"
    local i
    for ((i = 0; i < ${#words[@]}; i++)); do
        if [ "${words[$i]}" = "-c" ]; then echo "${words[$((i + 1))]}"; return; fi
    done
}

# data_paths DIR -> overrides pointing a config's Train/Eval data at a prepared set
data_paths() {
    echo "-o DataLoader.Train.dataset.image_root=$1 -o DataLoader.Train.dataset.cls_label_path=$1/train_list.txt" \
         "-o DataLoader.Eval.dataset.image_root=$1 -o DataLoader.Eval.dataset.cls_label_path=$1/val_list.txt"
}

# data_overrides DIR -> data_paths, loaded in the training process (no loader workers)
data_overrides() {
    echo "$(data_paths "$1") -o DataLoader.Train.loader.num_workers=0 -o DataLoader.Eval.loader.num_workers=0"
}

# start_chain LOG_DIR STATUS_LOG DATA_MODE: the globals every chain script shares. Makes
# LOG_PATH=LOG_DIR, empties status_log=STATUS_LOG, sets failures=0 and data_dir to DATA_MODE's
# prepared data; without that data, says which prepare.sh command makes it (from the callers'
# FILENAME and MODE) and exits.
start_chain() {
    LOG_PATH=$1
    status_log=$2
    mkdir -p "$LOG_PATH"
    : > "$status_log"
    failures=0
    data_dir=$(data_dir_for "$3")
    if [ ! -f "${data_dir}/train_list.txt" ]; then
        echo "no data in ${data_dir}: run bash test_tipc/prepare.sh ${FILENAME} ${MODE} first" >&2
        exit 2
    fi
}

# data_dir_for MODE -> where prepare.sh writes that mode's data
data_dir_for() {
    case $1 in
        whole_train_whole_infer|benchmark_train) echo "test_tipc/data/whole" ;;
        *) echo "test_tipc/data/lite" ;;
    esac
}
