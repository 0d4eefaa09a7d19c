#!/usr/bin/env bash
# cli_deploy_slurm.sh: the job scripts of deploy/slurm on real SLURM clusters (tests/deploy/slurm_cluster.sh), each
# in its --cpu variant (tiny models). On one node: pair-one-gpu and pair-two-gpus run the pair and a two-point kvload
# sweep to the end and must leave the report (report.csv with both points, index.html) and both daemons' exit status
# 0; pair-one-gpu without --cpu, on a node with no GPU, must fail at once with the daemon's reason and leave nothing
# running; a submission made to run without end is cancelled with scancel once the daemons serve and must stop both
# cleanly. On two nodes (network namespaces joined by a bridge): pair-two-nodes runs sharerd in the first node's
# namespace and receiverd in the second's (checked while they serve), talking across the bridge, to the end, and a
# second one is cancelled cleanly. Skipped (77) with the reason where this machine cannot have such clusters.
. "$(dirname "$0")/../cli_lib.sh" "$@"
. "$src/tests/deploy/slurm_cluster.sh"
for b in sharer/sharerd receiver/receiverd tools/kvwire loadgen/kvload; do
    [ -x "$build/$b" ] || fail "$build/$b is not built"
done
mkdir -p jobs
cp "$src/tests/deploy/pair_sweep.yaml" sweep.yaml

# submit SBATCH_OPTIONS... -- SCRIPT ARGS...: the job id (sbatch --parsable), submitted with 3 GiB; with --wait,
# whatever the job's exit status (expect_* check how it ended)
submit() {
    local opts=()
    while [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    shift
    local job
    job=$(sbatch --parsable --chdir "$tmp/jobs" --mem=3G --export "ALL,KW_SRC=$src,KW_BUILD=$build" "${opts[@]}" \
        "$src/deploy/slurm/$1" "${@:2}") || true
    [ -n "$job" ] || { cat jobs/*.out 2>/dev/null; fail "sbatch $1 failed"; } >&2
    echo "${job%%;*}"
}

# expect_done JOB NAME: the job ended done with its report and both daemons' exit status 0
expect_done() {
    local out=jobs/kvwire-pair-$1
    [ "$(cat "$out/status")" = done ] || { cat "jobs/kvwire-pair-$1.out"; fail "$2: job $1 ended $(cat "$out/status")"; }
    [ -s "$out/report/index.html" ] || fail "$2: job $1 left no report/index.html"
    [ "$(tail -n +2 "$out/report/report.csv" | wc -l)" = 2 ] ||
        { cat "$out/report/report.csv"; fail "$2: report.csv lacks the two points"; }
    grep -qx 'receiverd exit 0' "$out/daemons.txt" && grep -qx 'sharerd exit 0' "$out/daemons.txt" ||
        { cat "$out/daemons.txt"; fail "$2: the daemons of job $1 did not exit cleanly"; }
    grep -q "$2: done" "jobs/kvwire-pair-$1.out" || fail "$2: job $1's output does not end with done"
    # the daemons' CPU threads waited as the job set it: the submitter's KW_CPU_SPIN_US, else the automatic spin
    local wait="auto spin"
    [ -n "${KW_CPU_SPIN_US:-}" ] && wait=KW_CPU_SPIN_US=$KW_CPU_SPIN_US
    grep -q "CPU threads wait $wait" "$out/receiverd.log" && grep -q "CPU threads wait $wait" "$out/sharerd.log" ||
        fail "$2: the daemons of job $1 do not report CPU threads wait $wait"
}

# wait_serving JOB NAME: until the job's daemons serve (its url file)
wait_serving() {
    local out=jobs/kvwire-pair-$1
    for _ in $(seq 1200); do [ -s "$out/url" ] && return; sleep 0.1; done
    cat "jobs/kvwire-pair-$1.out" 2>/dev/null
    fail "$2: job $1 never served"
}

# expect_cancelled JOB NAME: scancel the serving job; it must end cancelled with both daemons stopped cleanly
expect_cancelled() {
    local out=jobs/kvwire-pair-$1
    sleep 1 # a few requests in flight
    scancel "$1"
    for _ in $(seq 600); do [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && break; sleep 0.1; done
    [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] || fail "$2: job $1 still runs after scancel"
    [ "$(cat "$out/status")" = cancelled ] ||
        { cat "jobs/kvwire-pair-$1.out"; fail "$2: job $1 ended $(cat "$out/status"), not cancelled"; }
    grep -qx 'receiverd exit 0' "$out/daemons.txt" && grep -qx 'sharerd exit 0' "$out/daemons.txt" ||
        { cat "$out/daemons.txt" "jobs/kvwire-pair-$1.out"; fail "$2: scancel did not stop the daemons of job $1 cleanly"; }
    grep -q 'stopped' "$out/sharerd.log" && grep -q 'receiverd: stopped' "$out/receiverd.log" ||
        fail "$2: the daemons of job $1 did not log their shutdown"
}

# 1. one node
slurm_cluster_start 1
cpt=$((slurm_cpus < 2 ? slurm_cpus : 2))
job=$(submit --wait --gpus=0 --cpus-per-task "$cpt" -- pair-one-gpu.sbatch --cpu "$tmp/sweep.yaml")
expect_done "$job" pair-one-gpu
job=$(submit --wait --gpus=0 --cpus-per-task 1 -- pair-two-gpus.sbatch --cpu "$tmp/sweep.yaml")
expect_done "$job" pair-two-gpus

# a GPU run where there is no GPU fails at once with the daemon's reason, and leaves nothing behind
# (configs of the tiny models, so that only the missing device can stop the daemons)
models=$PWD/models
"$kvwire" gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer "$src/models/tokenizers/qwen3" \
    --out "$models/tiny-qwen3" >/dev/null
"$kvwire" gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer "$src/models/tokenizers/qwen3" \
    --out "$models/tiny-qwen2" >/dev/null
"$kvwire" gen-fuser --receiver "$models/tiny-qwen3" --sharer "$models/tiny-qwen2" --out "$models/tiny-fuser" --seed 3 \
    --hidden 64 --intermediate 64 >/dev/null
sed "s|path: \.\./\.\./out/demo/|path: $models/|" "$src/deploy/config/sharerd.tiny.yaml" >sharerd.yaml
sed "s|path: \.\./\.\./out/demo/|path: $models/|" "$src/deploy/config/receiverd.tiny.yaml" >receiverd.yaml
export KW_SHARER_CONFIG=$PWD/sharerd.yaml KW_RECEIVER_CONFIG=$PWD/receiverd.yaml
job=$(submit --wait --gpus=0 --cpus-per-task "$cpt" -- pair-one-gpu.sbatch "$tmp/sweep.yaml")
unset KW_SHARER_CONFIG KW_RECEIVER_CONFIG
[ "$(cat "jobs/kvwire-pair-$job/status")" = failed ] || fail "a GPU run without a GPU ended $(cat "jobs/kvwire-pair-$job/status")"
grep -Eq 'no CUDA device|built without CUDA' "jobs/kvwire-pair-$job/sharerd.log" ||
    { cat "jobs/kvwire-pair-$job/sharerd.log"; fail "sharerd's log does not say why the GPU run failed"; }
grep -q 'sharerd did not start' "jobs/kvwire-pair-$job.out" || fail "the job's output does not say sharerd did not start"
! pgrep -f "jobs/kvwire-pair-$job/" >/dev/null || fail "a daemon of job $job outlived it"

job=$(submit --cpus-per-task "$cpt" --gpus=0 -- pair-one-gpu.sbatch --cpu "$tmp/sweep.yaml" --num-prompts 1000000)
wait_serving "$job" pair-one-gpu
expect_cancelled "$job" pair-one-gpu
slurm_cluster_stop
mv jobs jobs-one-node && mkdir jobs # job ids start again at 1 on the next cluster

# 2. two nodes, each a network namespace of its own
slurm_cluster_start 2
job=$(submit --wait --gpus-per-node=0 --cpus-per-task 1 -- pair-two-nodes.sbatch --cpu "$tmp/sweep.yaml")
expect_done "$job" pair-two-nodes
grep -q "sharerd node=${slurm_nodes[0]} addr=10\." "jobs/kvwire-pair-$job/placement.txt" &&
    grep -q "receiverd node=${slurm_nodes[1]} addr=10\." "jobs/kvwire-pair-$job/placement.txt" ||
    { cat "jobs/kvwire-pair-$job/placement.txt"; fail "placement.txt does not name the two nodes"; }
# while a second one serves: each daemon in its node's namespace; then scancel
job2=$(submit --gpus-per-node=0 --cpus-per-task 1 -- pair-two-nodes.sbatch --cpu "$tmp/sweep.yaml" --num-prompts 1000000)
wait_serving "$job2" pair-two-nodes
# node_programs I: the names of the programs running in node I's namespace
node_programs() { ip netns pids "${slurm_netns[$1]}" | while read -r p; do cat "/proc/$p/comm" 2>/dev/null; done; }
on_first=$(node_programs 0)
on_second=$(node_programs 1)
grep -qx sharerd <<<"$on_first" || { echo "$on_first"; fail "sharerd is not on the first node"; }
grep -qx receiverd <<<"$on_second" || { echo "$on_second"; fail "receiverd is not on the second node"; }
! grep -qx receiverd <<<"$on_first" || fail "a receiverd runs on the first node"
expect_cancelled "$job2" pair-two-nodes
echo "slurm: ok (one node: pair-one-gpu and pair-two-gpus done, a GPU run without a GPU refused, scancel clean;" \
    "two nodes: pair-two-nodes done across the bridge ($(tr '\n' ' ' <"jobs/kvwire-pair-$job/placement.txt")), scancel clean)"
