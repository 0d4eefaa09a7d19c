# kw-pair.sh: what the pair-*.sbatch job scripts share, sourced by them from $KW_SRC/deploy/slurm. A job runs sharerd
# and receiverd (where depends on the script), waits until both serve, runs a kvload sweep against receiverd, makes
# the report, and stops both daemons with SIGTERM; `scancel` (SIGTERM to the job) stops them just as cleanly.
#
# Everything lands in the job's output folder ($KW_OUT, default kvwire-pair-<job id> in the job's working folder):
# sharerd.log, receiverd.log, placement.txt (where each daemon ran: node, address, port, backend), sweep/, report/
# (report.csv, index.html), daemons.txt (each daemon's exit status) and status (running, done, cancelled or failed).
#
# Script options: --cpu runs both daemons on the CPU with the tiny models the job makes in models/ (any node, no GPU;
# submit with --gpus=0 or --gpus-per-node=0 where the script asks for GPUs); without it both run on CUDA with the
# models of the configs named by KW_SHARER_CONFIG and KW_RECEIVER_CONFIG. Then an optional sweep file (default
# loadgen/sweeps/demo.yaml; paths in it relative to KW_SRC) and kvload sweep options.
#
# Environment: KW_SRC (a kvwire checkout or an install's share/kvwire; default the submit folder), KW_BIN (a folder
# holding sharerd, receiverd, kvwire and kvload) or KW_BUILD (a build tree, default $KW_SRC/build), KW_OUT,
# KW_SHARER_CONFIG / KW_RECEIVER_CONFIG (GPU runs), KW_SHARER_MEM_MB / KW_RECEIVER_MEM_MB (compute.memory_limit_mb of
# each daemon; for two daemons on one GPU the default caps each at 45% of the GPU's memory), KW_SHARER_PORT (default 0:
# any free port, read back from the daemon's ready file), KW_CPU_SPIN_US (how long the CPU threads spin before they sleep; unset: automatic, by contention: docs/DEPLOY.md). The output folder must be visible to every node of the job
# (the submit folder on a shared file system), as SLURM's own output files are.

kw_pair_fail_status() {
    echo failed >"$kw_out/status"
    exit 1
}

# kw_pair_init NAME ARGS...: reads the script's options and prepares the output folder
kw_pair_init() {
    kw_name=$1
    shift
    kw_cpu=0
    if [ "${1:-}" = --cpu ]; then
        kw_cpu=1
        shift
    fi
    kw_sweep=${1:-loadgen/sweeps/demo.yaml}
    shift || true
    kw_sweep_args=("$@")
    kw_out=${KW_OUT:-$PWD/kvwire-pair-${SLURM_JOB_ID:-local}}
    mkdir -p "$kw_out" || exit 1
    kw_out=$(cd "$kw_out" && pwd)
    echo running >"$kw_out/status"
    : >"$kw_out/placement.txt"
    kw_threads=${SLURM_CPUS_PER_TASK:-2}
    kw_sharer_pid= kw_receiver_pid= kw_child=
    declare -gA kw_steps=()
    trap 'kw_pair_finish cancelled 143' TERM
    trap 'kw_pair_finish cancelled 130' INT
    local p
    for p in sharerd receiverd kvwire kvload; do
        if [ ! -x "$(kw_prog $p)" ]; then
            echo "$kw_name: $(kw_prog $p) is not there (set KW_BIN or KW_BUILD, or build $kw_src)" >&2
            kw_pair_fail_status
        fi
    done
    if [ $kw_cpu = 0 ]; then
        for p in KW_SHARER_CONFIG KW_RECEIVER_CONFIG; do
            if [ ! -r "${!p:-}" ]; then
                echo "$kw_name: a GPU run needs $p (a config naming the models); --cpu runs the tiny models" >&2
                kw_pair_fail_status
            fi
        done
    fi
}

# kw_prog NAME: the program's path (KW_BIN, or the build tree)
kw_prog() {
    if [ -n "${KW_BIN:-}" ]; then
        echo "$KW_BIN/$1"
        return
    fi
    local build=${KW_BUILD:-$kw_src/build}
    case $1 in
    sharerd) echo "$build/sharer/sharerd" ;;
    receiverd) echo "$build/receiver/receiverd" ;;
    kvwire) echo "$build/tools/kvwire" ;;
    kvload) echo "$build/loadgen/kvload" ;;
    esac
}

# kw_signal_daemon NAME PID: SIGTERM to a daemon. One started through srun (a job step named after it) gets it from
# SLURM with `scancel --signal`, which signals the step's processes: SIGTERM to srun itself would end the step, and
# the task with it, by SIGKILL. srun's own exit status may still say the step was killed (it does on some steps of a
# multi-node job): the daemon's true status is the one its wrapper wrote (kw_step_wrapper).
kw_signal_daemon() {
    local step=
    if [ -n "${kw_steps[$1]:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        step=$(squeue --steps -h -j "$SLURM_JOB_ID" -o '%i %j' 2>/dev/null | awk -v n="$1" '$2 == n {print $1; exit}')
    fi
    if [ -n "$step" ]; then
        # (on a multi-node job scancel reports the nodes the step does not run on as an invalid job id)
        scancel --signal=TERM "$step" 2>/dev/null
        # a step the signal did not reach is ended through srun after the daemons' shutdown deadline
        for _ in $(seq 300); do kill -0 "$2" 2>/dev/null || return 0; sleep 0.1; done
        echo "$kw_name: $1 still runs 30 s after SIGTERM; ending its step" >&2
        kill -TERM "$2" 2>/dev/null
    else
        kill -TERM "$2" 2>/dev/null
    fi
}

# kw_stop_daemons: SIGTERM to both (receiverd first), wait, record their exit statuses (a step's through srun)
kw_stop_daemons() {
    [ -n "$kw_sharer_pid$kw_receiver_pid" ] || return 0
    : >"$kw_out/daemons.txt"
    local name pid
    for name in receiverd sharerd; do
        [ $name = receiverd ] && pid=$kw_receiver_pid || pid=$kw_sharer_pid
        [ -n "$pid" ] || continue
        kw_signal_daemon $name "$pid"
        wait "$pid"
        local rc=$?
        [ -z "${kw_steps[$name]:-}" ] || rc=$(cat "$kw_out/$name.exit" 2>/dev/null || echo $rc)
        echo "$name exit $rc" >>"$kw_out/daemons.txt"
    done
    kw_sharer_pid= kw_receiver_pid=
}

# kw_pair_finish STATUS CODE: stops what runs, records STATUS and exits with CODE
kw_pair_finish() {
    trap '' TERM INT
    [ -n "$kw_child" ] && kill -TERM "$kw_child" 2>/dev/null && wait "$kw_child" 2>/dev/null
    kw_stop_daemons
    echo "$1" >"$kw_out/status"
    echo "$kw_name: $1; daemons: $(tr '\n' ' ' <"$kw_out/daemons.txt")"
    exit "$2"
}

# kw_run CMD...: in the background, so that a signal reaches the trap at once rather than after CMD
kw_run() {
    "$@" &
    kw_child=$!
    wait "$kw_child"
    local rc=$?
    kw_child=
    return $rc
}

# kw_ready_port FILE NAME PID: the port a daemon wrote into its ready file once listening
kw_ready_port() {
    for _ in $(seq 1200); do
        [ -s "$1" ] && { sed -n 's/^port=//p' "$1"; return 0; }
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "$kw_name: $2 did not start (log $kw_out/$2.log)" >&2
    return 1
}

# kw_step_wrapper NAME: sets kw_wrapper to the command that runs a daemon inside a job step and writes its exit status
# to NAME.exit in the output folder. It waits out the SIGTERM that SLURM sends every process of the step (the daemon,
# its handlers reset by exec, handles it itself), so that the status is written whatever srun reports.
kw_step_wrapper() {
    rm -f "$kw_out/$1.exit"
    # shellcheck disable=SC2016 # expanded by the wrapper's shell
    kw_wrapper=(bash -c 'trap : TERM INT; "$@"; echo $? >"$0"' "$kw_out/$1.exit")
}

# kw_node_addr NODE: the address other nodes reach NODE at (its NodeAddr; the name itself outside SLURM)
kw_node_addr() {
    local addr
    addr=$(scontrol show node -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p')
    echo "${addr:-$1}"
}

# kw_gpu_mem_mb: the first visible GPU's memory in MiB, empty without nvidia-smi
kw_gpu_mem_mb() {
    command -v nvidia-smi >/dev/null || return 0
    nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -dc 0-9
}

# kw_pair_models: the tiny models (--cpu) made once into the output folder
kw_pair_models() {
    kw_models=$kw_out/models
    [ $kw_cpu = 1 ] || return 0
    [ -d "$kw_models/tiny-fuser" ] && return 0
    local tok=$kw_src/models/tokenizers/qwen3
    kw_run "$(kw_prog kvwire)" gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer "$tok" \
        --out "$kw_models/tiny-qwen3" >/dev/null &&
        kw_run "$(kw_prog kvwire)" gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer "$tok" \
            --out "$kw_models/tiny-qwen2" >/dev/null &&
        kw_run "$(kw_prog kvwire)" gen-fuser --receiver "$kw_models/tiny-qwen3" --sharer "$kw_models/tiny-qwen2" \
            --out "$kw_models/tiny-fuser" --seed 3 --hidden 64 --intermediate 64 >/dev/null ||
        kw_pair_finish failed 1
}

# kw_compute_args DAEMON DEVICE: the daemon's compute.* options (backend, device, memory cap, threads)
kw_compute_args() {
    local cap
    [ "$1" = sharerd ] && cap=${KW_SHARER_MEM_MB:-} || cap=${KW_RECEIVER_MEM_MB:-}
    echo --compute.threads "$kw_threads"
    if [ $kw_cpu = 1 ]; then
        echo --compute.backend cpu
    else
        echo --compute.backend cuda --compute.device "$2"
    fi
    [ -z "$cap" ] || echo --compute.memory_limit_mb "$cap"
}

# kw_start_sharer HOST DEVICE LAUNCHER...: starts sharerd (through LAUNCHER, e.g. srun, when given) listening on HOST
kw_start_sharer() {
    local host=$1 device=$2 args config
    shift 2
    rm -f "$kw_out/sharerd.ready"
    if [ $kw_cpu = 1 ]; then
        config=$kw_src/deploy/config/sharerd.tiny.yaml
        args=(--models.0.path "$kw_models/tiny-qwen2" --models.1.path "$kw_models/tiny-qwen3")
    else
        config=$KW_SHARER_CONFIG
        args=()
    fi
    # shellcheck disable=SC2046 # kw_compute_args prints one option or value per word
    kw_wrapper=()
    [ $# -eq 0 ] || kw_step_wrapper sharerd
    "$@" "${kw_wrapper[@]}" "$(kw_prog sharerd)" --config "$config" --listen.host "$host" --listen.port "${KW_SHARER_PORT:-0}" \
        $(kw_compute_args sharerd "$device") "${args[@]}" --runtime.ready_file "$kw_out/sharerd.ready" \
        2>"$kw_out/sharerd.log" &
    kw_sharer_pid=$!
    [ $# -eq 0 ] || kw_steps[sharerd]=1
    kw_sharer_port=$(kw_ready_port "$kw_out/sharerd.ready" sharerd $kw_sharer_pid) || kw_pair_finish failed 1
}

# kw_start_receiver HOST DEVICE SHARER_ADDR LAUNCHER...: starts receiverd serving HTTP on HOST, fed by the sharer
kw_start_receiver() {
    local host=$1 device=$2 sharer_addr=$3 args config
    shift 3
    rm -f "$kw_out/receiverd.ready"
    if [ $kw_cpu = 1 ]; then
        config=$kw_src/deploy/config/receiverd.tiny.yaml
        args=(--model.path "$kw_models/tiny-qwen3" --fusers.0.path "$kw_models/tiny-fuser")
    else
        config=$KW_RECEIVER_CONFIG
        args=()
    fi
    # shellcheck disable=SC2046
    kw_wrapper=()
    [ $# -eq 0 ] || kw_step_wrapper receiverd
    "$@" "${kw_wrapper[@]}" "$(kw_prog receiverd)" --config "$config" --http.host "$host" --http.port 0 \
        --sharers.0.host "$sharer_addr" --sharers.0.port "$kw_sharer_port" \
        $(kw_compute_args receiverd "$device") "${args[@]}" --runtime.ready_file "$kw_out/receiverd.ready" \
        2>"$kw_out/receiverd.log" &
    kw_receiver_pid=$!
    [ $# -eq 0 ] || kw_steps[receiverd]=1
    kw_receiver_port=$(kw_ready_port "$kw_out/receiverd.ready" receiverd $kw_receiver_pid) ||
        kw_pair_finish failed 1
}

# kw_place DAEMON NODE ADDR PORT DEVICE: one line of placement.txt
kw_place() {
    local backend=cuda:$5
    [ $kw_cpu = 1 ] && backend=cpu
    echo "$1 node=$2 addr=$3 port=$4 backend=$backend" >>"$kw_out/placement.txt"
}

# kw_pair_serve_and_sweep RECEIVER_ADDR: waits for receiverd's health, runs the sweep, stops the daemons, reports
kw_pair_serve_and_sweep() {
    local url=http://$1:$kw_receiver_port
    for _ in $(seq 600); do
        curl -sf "$url/health" >/dev/null && break
        sleep 0.1
    done
    curl -sf "$url/health" >/dev/null || {
        echo "$kw_name: receiverd at $url is not healthy (log $kw_out/receiverd.log)" >&2
        kw_pair_finish failed 1
    }
    echo "$url" >"$kw_out/url"
    echo "$kw_name: serving, job ${SLURM_JOB_ID:-local}: $(tr '\n' ';' <"$kw_out/placement.txt")"
    cd "$kw_src" || kw_pair_finish failed 1
    kw_run "$(kw_prog kvload)" sweep "$kw_sweep" --out "$kw_out/sweep" --url "$url" "${kw_sweep_args[@]}" ||
        kw_pair_finish failed 1
    kw_stop_daemons
    local where="on the CPU (tiny models)"
    [ $kw_cpu = 1 ] || where="on CUDA"
    kw_run "$(kw_prog kvload)" report "$kw_out/sweep" --out "$kw_out/report" --metric tf_top1_agreement \
        --title "kvwire pair $where, $kw_name, job ${SLURM_JOB_ID:-local}" || kw_pair_finish failed 1
    grep -q ' exit [^0]' "$kw_out/daemons.txt" && kw_pair_finish failed 1
    echo done >"$kw_out/status"
    echo "$kw_name: done; report $kw_out/report/index.html; daemons: $(tr '\n' ' ' <"$kw_out/daemons.txt")"
}
