#!/usr/bin/env bash
# Helpers shared by the TIPC scripts. A TIPC config (test_tipc/configs/*/*_train_infer_python.txt)
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

has_gpu() {
    python -c "import paddle, sys; sys.exit(0 if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 1)" 2>/dev/null
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

# data_overrides DIR -> overrides pointing a config's Train/Eval data at a prepared set
data_overrides() {
    echo "-o DataLoader.Train.dataset.image_root=$1 -o DataLoader.Train.dataset.cls_label_path=$1/train_list.txt" \
         "-o DataLoader.Eval.dataset.image_root=$1 -o DataLoader.Eval.dataset.cls_label_path=$1/val_list.txt" \
         "-o DataLoader.Train.loader.num_workers=0 -o DataLoader.Eval.loader.num_workers=0"
}

# data_dir_for MODE -> where prepare.sh writes that mode's data
data_dir_for() {
    case $1 in
        whole_train_whole_infer) echo "test_tipc/data/whole" ;;
        *) echo "test_tipc/data/lite" ;;
    esac
}
