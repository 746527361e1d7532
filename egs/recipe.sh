# Sourced by egs/<corpus>/run.sh. A recipe may be started from anywhere (bash egs/child/run.sh ...):
# input paths on its command line are made absolute, then it works in its own folder, so that its
# data/ dump/ exp/ stay there.
#
#   recipe_init "$@"              the options in the array `args`; cwd = the recipe's folder
#   recipe_take NAME [DEFAULT]    remove --NAME VALUE from `args` into the variable NAME (recipe-only options)
#   exec ../../run.sh --corpus_option value ... "${args[@]}"    (the user's options win: they come last)
set -euo pipefail

# options whose value is an input path; made absolute when it exists relative to the caller's folder
recipe_path_opts=" raw_data train_config decode_config ssl_model myst_root test_list fsdd whisper_filter "

recipe_init() {
    local a name=""
    args=()
    for a in "$@"; do
        if [[ "$a" == --*=* ]]; then  # --name=value -> --name value
            args+=("${a%%=*}"); name=${a%%=*}; a=${a#*=}
        elif [[ "$a" == --* ]]; then
            args+=("$a"); name=$a; continue
        fi
        if [[ "$recipe_path_opts" == *" ${name#--} "* ]] && [ -e "$a" ]; then
            a=$(cd "$(dirname "$a")" && pwd)/$(basename "$a")
        fi
        args+=("$a"); name=""
    done
    cd "$(dirname "${BASH_SOURCE[1]}")"
    export ASRKIT_IN_RECIPE=1  # the root run.sh then refuses to fall back on the demo
}

recipe_take() {
    local name=$1 i rest=()
    printf -v "$name" '%s' "${2:-}"
    for ((i = 0; i < ${#args[@]}; i++)); do
        if [ "${args[$i]}" = "--$name" ] && [ $((i + 1)) -lt ${#args[@]} ]; then
            printf -v "$name" '%s' "${args[$((i + 1))]}"; i=$((i + 1))
        else
            rest+=("${args[$i]}")
        fi
    done
    args=(${rest[@]+"${rest[@]}"})
}
