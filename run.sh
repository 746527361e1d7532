#!/usr/bin/env bash
# asrkit recipe driver: data prep -> feature dump -> token list -> training -> decoding -> scoring.
#
#   ./run.sh                                   # the offline demo (egs/mini), all stages
#   ./run.sh --raw_data corpus/manifest.jsonl  # your corpus, all stages
#   ./run.sh --stage 3 --stop_stage 3          # one stage (rerun it after an interruption to resume)
#   ./run.sh --help                            # every option with its default
#
# Outputs (data/ dump/ exp/) go to the current directory, so a recipe egs/<corpus>/run.sh keeps its
# own. A finished stage is skipped on rerun unless its inputs or options changed (or --force true).
set -euo pipefail
{  # the whole script is read before it runs, so that editing it during a long run is safe

asrkit_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ------------------------------------------------------------------ options: name, default, help
opt_names=(); opt_helps=()
opt() { opt_names+=("$1"); opt_helps+=("$3"); printf -v "$1" '%s' "$2"; }

opt stage 0 "first stage to run (0-5)"
opt stop_stage 5 "last stage to run"
opt skip_stages "" "stages not to run, e.g. \"1 2\""
opt force false "rerun stages even when they are up to date"
opt nj "$(nproc 2>/dev/null || echo 4)" "parallel jobs (audio checks, feature dump; default: CPU cores)"
opt ngpu auto "GPUs per node (auto: all visible GPUs; 0: CPU)"
opt seed 0 "random seed (split, training)"
opt datadir data "split lists and token lists"
opt dumpdir dump "feature stores"
opt expdir exp "experiments and logs"
# stage 0
opt raw_data "" "raw corpus: a manifest (.jsonl/.csv/.tsv) or a Kaldi data dir; empty: the offline demo"
opt local_data "" "command run first in stage 0 as '<command> --out DATADIR/local'; it writes DATADIR/local/manifest.jsonl"
opt normalizer basic "text normalizer for training text, references and hypotheses (none, basic, child, whisper)"
opt normalizer_opts "" "normalizer rule overrides, e.g. digits_to_words=false"
opt score_normalizers "" "stage 5 also scores under these normalizers, e.g. whisper (comma-separated; a table each)"
opt min_duration 0.1 "drop utterances shorter than this (seconds)"
opt max_duration 30 "drop utterances longer than this (seconds)"
opt min_words 1 "drop utterances with fewer words"
opt split_ratios "0.8,0.1,0.1" "train,valid,test shares of the audio, speaker-disjoint"
opt split_field "" "take each utterance's split from this manifest field instead"
opt split_lists "" "name=file,... utterance or speaker id lists per split instead"
opt prep_args "" "more options for asrkit.bin.prepare_data"
# stage 1
opt feats_type wavlm "wavlm (any HF speech encoder) or fbank"
opt ssl_model microsoft/wavlm-base-plus "HF model id or local dir of the SSL encoder"
opt ssl_layer 9 "hidden layer(s) to store: N, N,M,..., all or last"
opt speed_perturb "" "speed factors for the training set, e.g. \"0.9 1.0 1.1\""
opt dump_args "" "more options for asrkit.bin.dump_feats"
# stage 2
opt token_type bpe "char, bpe, word, or whisper (the --ssl_model Whisper checkpoint's own tokens)"
opt nbpe 300 "BPE vocabulary size (token_type bpe)"
opt bpemode unigram "sentencepiece model type: unigram or bpe"
opt text_style as_is "token_type whisper: transcripts trained as they are (as_is), or as sentences, as Whisper writes (sentence)"
# stage 3
opt train_set train "training split"
opt valid_set valid "validation split"
opt train_config "$asrkit_root/conf/train_conformer.yaml" "training config (model and optimization)"
opt train_args "" "more options for asrkit.bin.train, e.g. \"--max_epoch 5\""
opt tag "" "experiment name (default: from config, features and tokens)"
opt num_nodes 1 "nodes for multi-node training"
opt node_rank 0 "this node's rank (multi-node without Slurm)"
opt master_addr localhost "rendezvous host (multi-node; under Slurm: the allocation's first node)"
opt master_port 29500 "rendezvous port (multi-node)"
opt node_wait_timeout 300 "multi-node: seconds without a heartbeat from another node before this one stops"
opt nproc_per_node "" "training processes per node (default: ngpu, or 1 on CPU)"
opt launcher local "local (torchrun on this node) or slurm (srun torchrun on every node)"
# stage 4-5
opt test_sets "test" "splits to decode and score"
opt decode_config "$asrkit_root/conf/decode.yaml" "decoding config"
opt decode_args "" "more options for asrkit.bin.decode"
opt inference_model model.avg.safetensors "weights in the exp dir to decode with"

usage() {
    echo "Usage: $0 [--option value ...]"
    echo "Stages: 0 data prep | 1 feature dump | 2 token list | 3 training | 4 decoding | 5 scoring"
    echo "With no --raw_data, the offline demo (egs/mini), which also takes --num_speakers [120],"
    echo "--utts_per_speaker [10] and --compare_fbank [true]."
    echo "Options (default in brackets):"
    local i
    for i in "${!opt_names[@]}"; do
        printf '  --%-16s %s [%s]\n' "${opt_names[$i]}" "${opt_helps[$i]}" "${!opt_names[$i]}"
    done
}

argv=("$@") unknown=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
        --*)
            name=${1#--}; name=${name//-/_}
            [ $# -ge 2 ] || { echo "$0: option --$name needs a value" >&2; exit 2; }
            if [[ " ${opt_names[*]} " == *" $name "* ]]; then
                printf -v "$name" '%s' "$2"
            else
                unknown+=("--$name")  # an option of the demo recipe, or a mistake (checked below)
            fi
            shift 2 ;;
        *) echo "$0: unexpected argument '$1' (options are --name value; see --help)" >&2; exit 2 ;;
    esac
done

# No corpus given: run the offline demo recipe, which generates its own corpus.
if [ -z "$raw_data" ] && [ -z "$local_data" ] && [ "$stop_stage" -ge 0 ]; then
    if [ "${ASRKIT_IN_RECIPE:-}" = 1 ]; then
        echo "$0: no --raw_data or --local_data given" >&2; exit 2
    fi
    echo "No --raw_data given: running the offline demo recipe egs/mini (see README)."
    cd "$asrkit_root/egs/mini" && exec ./run.sh ${argv[@]+"${argv[@]}"}
fi
if [ ${#unknown[@]} -gt 0 ]; then
    echo "$0: unknown option ${unknown[0]} (see --help)" >&2; exit 2
fi

need_config() {  # need_config STAGE OPTION PATH: a file (or dir) the stages to run read must exist
    if [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ] && [ -n "$3" ] && [ ! -e "$3" ]; then
        echo "$0: $2 $3: no such file or directory (relative paths are taken from $PWD)" >&2; exit 2
    fi
}
need_config 3 --train_config "$train_config"
need_config 4 --decode_config "$decode_config"
need_config 0 --raw_data "$raw_data"

# shellcheck source=path.sh
. "$asrkit_root/path.sh"

# ------------------------------------------------------------------ derived names
if [ "$ngpu" = auto ]; then  # torch only where there is a GPU at all: importing it takes seconds
    ngpu=0
    if command -v nvidia-smi > /dev/null 2>&1; then
        ngpu=$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
    fi
fi
[ -n "$nproc_per_node" ] || nproc_per_node=$(( ngpu > 0 ? ngpu : 1 ))
if [ "$feats_type" = fbank ]; then
    feats_tag=fbank
else
    feats_tag="$(basename "$ssl_model")_L${ssl_layer//,/-}"
fi
[ -z "$speed_perturb" ] || feats_tag+="_sp"
case "$token_type" in
    bpe) unit="bpe${nbpe}" ;;
    whisper) unit="whisper$([ "$text_style" = as_is ] || echo "_$text_style")" ;;
    *) unit=$token_type ;;
esac
token_dir="$datadir/token_list/$unit"
if [ -z "$tag" ]; then
    tag="$(basename "${train_config%.*}")_${feats_tag}_${unit}"
    tag=${tag#train_}
fi
exp="$expdir/$tag"
dtag="$(basename "${decode_config%.*}")_${inference_model%.*}"  # model.avg.safetensors -> model.avg
logdir="$expdir/logs"
mkdir -p "$logdir" "$expdir/stamps"
all_sets="$train_set $valid_set $test_sets"
if [ "$launcher" = slurm ] && [ "$master_addr" = localhost ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    master_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # the allocation's first node
fi
distributed_stages="3"  # the stages that run as one job across the processes of every node
if [ "$launcher" = slurm ] || [ "$num_nodes" -gt 1 ]; then distributed_stages="1 3 4"; fi
node_suffix="" node_started=""
if [ "$node_rank" -gt 0 ]; then
    node_suffix=".node$node_rank"
    node_started="$expdir/stamps/.node$node_rank.started"
    touch "$node_started"
fi

# ------------------------------------------------------------------ nodes: heartbeats, stopping
# By hand across nodes, each run.sh rewrites its heartbeat file every few seconds while it lives and
# writes "exited <status>" when it ends. A node that sees no new heartbeat from the node it needs (node
# 0, or in a distributed stage every other node) for --node_wait_timeout seconds stops with the cause:
# it never waits forever for a node that failed, was killed or never started. Times are this node's
# own (the content changes, not the file's mtime, is what counts): clocks need not agree.
heartbeat_s=5 stage_pid="" stage_run="" stage_status=0 lost=""
declare -A beat_seen=() beat_since=()
heartbeat_file() { echo "$expdir/stamps/.node$1.heartbeat"; }
if [ "$num_nodes" -gt 1 ] && [ "$launcher" = local ]; then
    (
        f=$(heartbeat_file "$node_rank") n=0
        while kill -0 $$ 2> /dev/null; do  # (ends when run.sh does, even if it was killed)
            n=$((n + 1)); echo "alive $n $(hostname) $$" > "$f.tmp$$" && mv -f "$f.tmp$$" "$f"
            sleep "$heartbeat_s"
        done
    ) > /dev/null 2>&1 &
    heartbeat_pid=$!
    trap 'status=$?; kill "$heartbeat_pid" 2> /dev/null || true; echo "exited $status" > "$(heartbeat_file "$node_rank")"' EXIT
fi

# peer_lost R...: true if one of nodes R... has sent no new heartbeat for --node_wait_timeout seconds
# (counted from when this node first looked), its cause in $lost; false while all are alive.
peer_lost() {
    local r f beat
    lost=""
    for r in "$@"; do
        f=$(heartbeat_file "$r")
        beat=$(cat "$f" 2> /dev/null || true)
        if [ -z "${beat_since[$r]:-}" ] || [ "$beat" != "${beat_seen[$r]}" ]; then
            beat_seen[$r]=$beat beat_since[$r]=$SECONDS
        fi
        (( SECONDS - beat_since[$r] >= node_wait_timeout )) || continue
        case $beat in
            "") lost="no sign of node $r for ${node_wait_timeout}s (no $f): start it with --node_rank $r and the same options, or raise --node_wait_timeout" ;;
            exited*) lost="node $r stopped (${beat}) and has not been restarted for ${node_wait_timeout}s: see its logs in $logdir, fix the cause and rerun every node" ;;
            *) lost="node $r has sent no heartbeat for ${node_wait_timeout}s (killed, out of memory, or its host is down): rerun every node" ;;
        esac
        return 0
    done
    return 1
}

peers() {  # the nodes this one needs now: node 0, or in a distributed stage on node 0 all others
    if [ "$node_rank" -gt 0 ]; then echo 0; else seq 1 $((num_nodes - 1)); fi
}

# end_stage: end the running stage's processes: its subshell and every process started under it, found
# by the mark in their environment (torchrun starts its workers in sessions of their own, and a worker
# whose torchrun died is nobody's child: neither a process group nor the tree reaches them). SIGTERM,
# then SIGKILL for those alive $ASRKIT_KILL_GRACE (10) s later.
stage_procs() {
    echo "$stage_pid"
    grep -lzx "ASRKIT_STAGE_RUN=$stage_run" /proc/[0-9]*/environ 2> /dev/null | cut -d/ -f3 || true
}
end_stage() {
    local procs i
    procs=$(stage_procs)
    # shellcheck disable=SC2086
    kill -TERM $procs 2> /dev/null || true
    for i in $(seq $(( ${ASRKIT_KILL_GRACE:-10} * 5 ))); do
        # shellcheck disable=SC2086
        procs=$(for p in $(stage_procs); do ! kill -0 "$p" 2> /dev/null || echo "$p"; done)
        [ -n "$procs" ] || return 0
        sleep 0.2
    done
    # shellcheck disable=SC2086
    kill -KILL $procs 2> /dev/null || true
}
# A signal (Ctrl-C, scancel, kill) ends the running stage's whole tree before run.sh exits.
trap 'trap - INT TERM HUP; [ -z "$stage_pid" ] || end_stage; exit 130' INT
trap 'trap - INT TERM HUP; [ -z "$stage_pid" ] || end_stage; exit 143' TERM HUP

# The exact command line, so a run can be repeated or resumed from any stage.
{ printf '# %s in %s\n' "$(date '+%F %T')" "$PWD"; printf '%q ' "$0" "${argv[@]}"; echo; } >> "$logdir/commands.sh"

# ------------------------------------------------------------------ stage bookkeeping
# fingerprint PATHS: content hash of small files, size+mtime of big ones (feature stores), of the
# files (or the files under the dirs) PATHS lists, one a line.
fingerprint() {
    local f paths=()
    mapfile -t paths < <(grep -v '^$' <<< "$1")
    [ ${#paths[@]} -gt 0 ] || return 0
    find "${paths[@]}" -type f ! -name '.*' | LC_ALL=C sort | while IFS= read -r f; do
        if [ "$(stat -c %s "$f")" -lt 50000000 ]; then
            echo "$f $(md5sum < "$f")"
        else
            echo "$f $(stat -c '%s %.9Y' "$f")"
        fi
    done
}

# run_stage N "title" "inputs" "outputs" "option names" command...
# Inputs and outputs: one path a line (a path may hold spaces). Skips the stage when its stamp matches
# its options, command and inputs, and its outputs exist. A missing input is named with the stage
# that writes it. The command runs in a subshell with errexit; the commands it runs are traced into
# the stage log. Across nodes (--num_nodes > 1), node 0 runs every stage and writes the stamps;
# another node takes part in the distributed stages (1, 3, 4) only, and after each stage waits for
# node 0's stamp.
declare -A made_by=()  # output path -> the stage that writes it
run_stage() {
    local n=$1 title=$2 inputs=$3 outputs=$4 names=$5; shift 5
    # stamps and logs are per output: features per feats_tag, token lists per unit, experiments per tag
    local key path
    case $n in 0) key="" ;; 1) key=".$feats_tag" ;; 2) key=".$unit" ;; *) key=".$tag" ;; esac
    local stamp="$expdir/stamps/stage$n$key.done" log="$logdir/stage$n$key$node_suffix.log" sig
    while IFS= read -r path; do [ -z "$path" ] || made_by[$path]=$n; done <<< "$outputs"
    if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ] || [[ " $skip_stages " == *" $n "* ]]; then
        return 0
    fi
    while IFS= read -r path; do
        [ -z "$path" ] || [ -e "$path" ] || missing_input "$n" "$title" "$path"
    done <<< "$inputs"
    # shellcheck disable=SC2086
    sig=$({ for name in $names; do printf '%s=%q\n' "$name" "${!name}"; done
            printf '%q ' "$@"; echo; fingerprint "$inputs"; } | md5sum | cut -d' ' -f1)
    if [ "$force" != true ] && stamp_matches "$stamp" "$sig" "$outputs"; then
        echo "[stage $n] $title: up to date, skipped"
        return 0
    fi
    if [ "$node_rank" -gt 0 ]; then
        if [[ " $distributed_stages " == *" $n "* ]]; then
            run_logged "$n" "$title" "$log" "$@"
            [ "$stage_status" -eq 0 ] || exit 1
        fi
        wait_for_node0 "$n" "$title" "$stamp" "$sig" "$outputs"
        return 0
    fi
    rm -f "$stamp" "$stamp.failed"
    # A rerun with the same signature continues an interrupted run (training resumes from its
    # checkpoint); a different one starts afresh (see stage 3).
    stage_resuming=false
    [ "$force" != true ] && [ -f "$stamp.started" ] && [ "$(cat "$stamp.started")" = "$sig" ] && stage_resuming=true
    echo "$sig" > "$stamp.started"
    run_logged "$n" "$title" "$log" "$@"
    if [ "$stage_status" -ne 0 ]; then
        touch "$stamp.failed"  # (the other nodes stop waiting)
        exit 1
    fi
    echo "$sig" > "$stamp"
}

lines() { printf '%s\n' "$@"; }  # stage inputs and outputs: one path a line

stamp_matches() {  # stamp_matches STAMP SIG OUTPUTS: the stamp holds SIG and every output (a line each) exists
    local o
    while IFS= read -r o; do [ -z "$o" ] || [ -e "$o" ] || return 1; done <<< "$3"
    [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}

missing_input() {  # missing_input N TITLE PATH: say what is missing and what to run, then stop
    local by="${made_by[$3]:-}" o
    if [ -z "$by" ]; then  # a file under an output dir, or the dir of an output
        for o in "${!made_by[@]}"; do
            if [[ $o == "$3"/* || $3 == "$o"/* ]]; then by=${made_by[$o]}; break; fi
        done
    fi
    echo "[stage $1] $2: cannot start: $3 does not exist." >&2
    if [ -n "$by" ]; then
        echo "Stage $by writes it: run it first (a run from --stage $by, or without --stage):" >&2
        echo "  (cd $(printf '%q' "$PWD") && $(printf '%q ' "$0" "${argv[@]}")--stage $by)" >&2
    else
        echo "It is given by an option (see --help); relative paths are taken from $PWD." >&2
    fi
    exit 1
}

# run_logged N TITLE LOG command...: run a stage's command, its output into LOG; its exit status in
# $stage_status. (Not a status of its own: bash ignores errexit in all that runs under a checked call,
# `if f` or `f ||`, the stage's subshell included, which would then go on past a failed command.)
run_logged() {
    local n=$1 title=$2 log=$3 t0=$SECONDS status; shift 3
    echo "[stage $n] $title ... (log: $log)"
    printf '# %s\n' "$(date '+%F %T')" > "$log"
    stage_run="$$.$n.$RANDOM"  # (marks the stage's processes: end_stage)
    if [ -t 1 ]; then  # on a terminal, show progress bars as well as logging them
        ( export ASRKIT_STAGE_RUN=$stage_run; exec {trace}>>"$log"; BASH_XTRACEFD=$trace; set -ex; "$@" ) \
            > >(tee -a "$log") 2>&1 &
    else
        ( export ASRKIT_STAGE_RUN=$stage_run; exec {trace}>>"$log"; BASH_XTRACEFD=$trace; set -ex; "$@" ) \
            >> "$log" 2>&1 &
    fi
    stage_pid=$!
    status=0
    supervise "$n" "$title" "$log" || status=$?
    stage_pid=""
    if [ "$status" -ne 0 ]; then
        echo "[stage $n] $title FAILED (exit $status) after $((SECONDS - t0))s. Last lines of $log:" >&2
        sed 's/.*\r//' "$log" | grep -v '^+' | tail -n 12 >&2
        echo "Fix the problem and resume with:" >&2
        echo "  (cd $(printf '%q' "$PWD") && $(printf '%q ' "$0" "${argv[@]}")--stage $n)" >&2
    else
        echo "[stage $n] $title: done in $((SECONDS - t0))s"
    fi
    stage_status=$status
}

# supervise N TITLE LOG: wait for the stage's process (stage_pid) and return its status. Across nodes,
# if a node this one needs is lost (peer_lost), end the stage's whole tree (a torchrun whose peer died
# may hang, and outlive a SIGTERM) and fail; so does the stage's own failure, leaving no process behind.
supervise() {
    local i status=0
    if [ "$num_nodes" -gt 1 ] && [ "$launcher" = local ]; then
        while kill -0 "$stage_pid" 2> /dev/null; do
            # shellcheck disable=SC2046
            if peer_lost $(peers); then
                echo "[stage $1] $2: $lost; stopping this node's part" | tee -a "$3" >&2
                end_stage
                wait "$stage_pid" 2> /dev/null || true
                return 1
            fi
            for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$stage_pid" 2> /dev/null && sleep 0.2; done
        done
    fi
    wait "$stage_pid" || status=$?
    [ "$status" -eq 0 ] || end_stage  # (what it left behind: e.g. workers of a torchrun that died)
    return "$status"
}

wait_for_node0() {  # wait_for_node0 N TITLE STAMP SIG OUTPUTS: until node 0 has the stage done
    local said=false
    until stamp_matches "$3" "$4" "$5"; do
        if [ "$3.failed" -nt "$node_started" ]; then
            echo "[stage $1] $2 failed on node 0 (see its log in $logdir): stopping" >&2
            exit 1
        fi
        if peer_lost 0; then
            [ ! -e "$3.failed" ] || lost="stage $1 failed on node 0 ($3.failed); $lost"
            echo "[stage $1] $2: $lost: stopping" >&2
            exit 1
        fi
        $said || echo "[stage $1] $2: waiting for node 0 (until $3 is written; every node needs the same options)"
        said=true
        sleep 2
    done
    echo "[stage $1] $2: done on node 0"
}

# ------------------------------------------------------------------ stage 0: data preparation
stage0() {
    if [ -n "$local_data" ]; then
        # shellcheck disable=SC2086
        $local_data --out "$datadir/local"
    fi
    # shellcheck disable=SC2086
    python -m asrkit.bin.prepare_data --raw_data "$raw_data" --out_dir "$datadir" \
        --normalizer "$normalizer" --normalizer_opts "$normalizer_opts" \
        --min_duration "$min_duration" --max_duration "$max_duration" --min_words "$min_words" \
        --split_ratios "$split_ratios" --split_field "$split_field" --split_lists "$split_lists" \
        --seed "$seed" --nj "$nj" $prep_args
}
[ -n "$raw_data" ] || raw_data="$datadir/local/manifest.jsonl"
stage0_inputs="$raw_data"
[ -n "$local_data" ] && stage0_inputs="${local_data%% *}"
run_stage 0 "data preparation" "$stage0_inputs" "$datadir/$train_set.jsonl" \
    "raw_data local_data normalizer normalizer_opts min_duration max_duration min_words split_ratios split_field split_lists seed prep_args" \
    stage0

# The command that runs python module $1 as $2 processes per node under the launcher (stages 1, 3).
launch_cmd() {
    local module=$1 procs=$2 id="asrkit-$tag-$3"
    if [ "$launcher" = slurm ]; then
        launch=(srun --nodes "$num_nodes" --ntasks-per-node 1 torchrun --nnodes "$num_nodes"
                --nproc_per_node "$procs" --rdzv_backend c10d
                --rdzv_endpoint "$master_addr:$master_port" --rdzv_id "$id" -m "$module")
    elif [ "$num_nodes" -gt 1 ]; then
        # static rendezvous: node R's processes are ranks R*procs.. (rank 0, which merges and reports, on node 0)
        launch=(torchrun --nnodes "$num_nodes" --node_rank "$node_rank" --nproc_per_node "$procs"
                --master_addr "$master_addr" --master_port "$master_port" -m "$module")
    elif [ "$procs" -gt 1 ]; then
        launch=(torchrun --standalone --nproc_per_node "$procs" -m "$module")
    else
        launch=(python -m "$module")
    fi
}

# ------------------------------------------------------------------ stage 1: feature dump
stage1() {
    local s data=() out=()
    for s in $all_sets; do
        data+=("$datadir/$s.jsonl"); out+=("$dumpdir/$feats_tag/$s.h5")
    done
    # one process for every split (the model is loaded once; it spawns one per GPU itself); across
    # nodes one per GPU (or per node on CPU), each taking a share of the utterances; speed
    # perturbation for training data only
    local launch
    if [[ " $distributed_stages " == *" 1 "* ]]; then
        launch_cmd asrkit.bin.dump_feats "$(( ngpu > 0 ? ngpu : 1 ))" dump
    else
        launch_cmd asrkit.bin.dump_feats 1 dump
    fi
    # shellcheck disable=SC2086
    "${launch[@]}" --data "${data[@]}" --out "${out[@]}" \
        --feats_type "$feats_type" --ssl_model "$ssl_model" --ssl_layer "$ssl_layer" \
        --speed_perturb "$speed_perturb" --speed_perturb_data "$datadir/$train_set.jsonl" \
        --nj "$nj" --ngpu "$ngpu" --force "$force" $dump_args
}
run_stage 1 "feature dump ($feats_tag)" "$(for s in $all_sets; do lines "$datadir/$s.jsonl"; done)" \
    "$(for s in $all_sets; do lines "$dumpdir/$feats_tag/$s.h5"; done)" \
    "feats_type ssl_model ssl_layer speed_perturb dump_args train_set all_sets" stage1

# ------------------------------------------------------------------ stage 2: token list
stage2() {
    python -m asrkit.bin.make_tokens --data "$datadir/$train_set.jsonl" --token_type "$token_type" \
        --nbpe "$nbpe" --bpemode "$bpemode" --ssl_model "$ssl_model" --text_style "$text_style" --out "$token_dir"
}
run_stage 2 "token list ($unit)" "$datadir/$train_set.jsonl" "$token_dir/tokens.txt" \
    "token_type nbpe bpemode$([ "$token_type" != whisper ] || echo " ssl_model")$([ "$text_style" = as_is ] || echo " text_style")" stage2

# ------------------------------------------------------------------ stage 3: training
stage3() {
    if [ "$node_rank" -eq 0 ] && [ -d "$exp" ] && ! $stage_resuming; then
        # A checkpoint made from other inputs or options must not be resumed: keep it aside.
        local old
        old="$exp.old-$(date +%Y%m%d-%H%M%S)"
        echo "stage 3's inputs or options changed since $exp was trained: moving it to $old"
        mv "$exp" "$old"
    fi
    local launch
    launch_cmd asrkit.bin.train "$nproc_per_node" train
    # shellcheck disable=SC2086
    "${launch[@]}" --config "$train_config" \
        --train_data "$datadir/$train_set.jsonl" --train_feats "$dumpdir/$feats_tag/$train_set.h5" \
        --valid_data "$datadir/$valid_set.jsonl" --valid_feats "$dumpdir/$feats_tag/$valid_set.h5" \
        --token_dir "$token_dir" --exp_dir "$exp" --ngpu "$ngpu" --seed "$seed" $train_args
}
run_stage 3 "training ($tag)" \
    "$(lines "$train_config" "$datadir/$train_set.jsonl" "$datadir/$valid_set.jsonl" \
             "$dumpdir/$feats_tag/$train_set.h5" "$dumpdir/$feats_tag/$valid_set.h5" "$token_dir")" \
    "$exp/$inference_model" \
    "train_args tag seed ngpu nproc_per_node num_nodes launcher" stage3

# ------------------------------------------------------------------ stage 4: decoding
stage4() {
    # across nodes: one process per GPU (or per node on CPU) of every node, each decoding a share
    local s launch
    for s in $test_sets; do
        if [[ " $distributed_stages " == *" 4 "* ]]; then
            launch_cmd asrkit.bin.decode "$(( ngpu > 0 ? ngpu : 1 ))" "decode-$s"
        else
            launch=(python -m asrkit.bin.decode)
        fi
        # shellcheck disable=SC2086
        "${launch[@]}" --config "$decode_config" --model_dir "$exp" \
            --checkpoint "$inference_model" --data "$datadir/$s.jsonl" --feats "$dumpdir/$feats_tag/$s.h5" \
            --out "$exp/decode_${s}_${dtag}" --ngpu "$ngpu" $decode_args
    done
}
run_stage 4 "decoding ($test_sets)" \
    "$(lines "$decode_config" "$exp/$inference_model"
       for s in $test_sets; do lines "$datadir/$s.jsonl" "$dumpdir/$feats_tag/$s.h5"; done)" \
    "$(for s in $test_sets; do lines "$exp/decode_${s}_${dtag}/hyp.jsonl"; done)" \
    "test_sets decode_args inference_model" stage4

# ------------------------------------------------------------------ stage 5: scoring
stage5() {
    local s
    for s in $test_sets; do
        python -m asrkit.bin.score --data "$datadir/$s.jsonl" --hyp "$exp/decode_${s}_${dtag}/hyp.jsonl" \
            --out "$exp/decode_${s}_${dtag}" --normalizers "$normalizer${score_normalizers:+,$score_normalizers}" \
            --normalizer_opts "$normalizer_opts"
    done
    python -m asrkit.bin.score --gather "$exp"
}
run_stage 5 "scoring" "$(for s in $test_sets; do lines "$datadir/$s.jsonl" "$exp/decode_${s}_${dtag}/hyp.jsonl"; done)" \
    "$exp/RESULTS.md" "test_sets normalizer normalizer_opts score_normalizers" stage5

if [ "$stop_stage" -ge 5 ] && [ -f "$exp/RESULTS.md" ]; then
    echo
    echo "Results ($exp/RESULTS.md):"
    sed -n '/^###\|^|/p' "$exp/RESULTS.md"
fi
exit 0
}
