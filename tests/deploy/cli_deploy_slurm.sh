#!/usr/bin/env bash
# cli_deploy_slurm.sh: deploy/slurm/pair-cpu.sbatch on a real one-node SLURM cluster (Debian's slurm-wlm and munge):
# munged, slurmctld and slurmd started here as root, with a slurm.conf and every state file in a temporary folder and
# unprivileged ports, then stopped. A first submission runs the pair and a two-point kvload sweep to the end and must
# leave its report (report.csv with both points, index.html) and both daemons' exit status 0; a second one, made to
# run without end, is cancelled with scancel once the daemons serve and must stop both cleanly (status cancelled,
# exit status 0 each). Skipped (77) with the reason when not root or when the SLURM packages are missing.
. "$(dirname "$0")/../cli_lib.sh" "$@"
[ "$(id -u)" = 0 ] || { echo "SKIP: the one-node SLURM cluster is started as root (munged, slurmctld, slurmd)"; exit 77; }
for b in munged slurmctld slurmd sbatch squeue scancel sinfo ss; do
    command -v $b >/dev/null ||
        { echo "SKIP: $b is not installed (apt-get install slurmctld slurmd slurm-client munge iproute2)"; exit 77; }
done
for b in sharer/sharerd receiver/receiverd tools/kvwire loadgen/kvload; do
    [ -x "$build/$b" ] || fail "$build/$b is not built"
done
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
[ "$mem_mb" -ge 4000 ] || { echo "SKIP: the job asks for 3 GiB, this machine has $mem_mb MiB"; exit 77; }

cluster=$tmp/cluster
mkdir -p "$cluster/state" "$cluster/spool" jobs
daemon_pids=()
cleanup() {
    if [ -n "${SLURM_CONF:-}" ]; then scancel --quiet --user=root 2>/dev/null || true; fi
    for p in "${daemon_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${daemon_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# free_port: an unprivileged TCP port nothing listens on
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [ -z "$(ss -Hltn "sport = :$p")" ] && { echo $p; return; }
    done
    fail "no free port"
}

dd if=/dev/urandom of="$cluster/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$cluster/munge.key"
munged -F -f -S "$cluster/munge.sock" --key-file="$cluster/munge.key" --pid-file="$cluster/munged.pid" \
    --seed-file="$cluster/munged.seed" --log-file="$cluster/munged.log" >"$cluster/munged.out" 2>&1 &
daemon_pids+=($!)
for _ in $(seq 100); do [ -S "$cluster/munge.sock" ] && break; sleep 0.1; done
[ -S "$cluster/munge.sock" ] || { cat "$cluster/munged.out"; fail "munged did not start"; }

node=$(hostname -s)
cpus=$(nproc)
cat >"$cluster/slurm.conf" <<CONF
ClusterName=kwtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$cluster/munge.sock
CredType=cred/munge
StateSaveLocation=$cluster/state
SlurmdSpoolDir=$cluster/spool
SlurmctldPidFile=$cluster/slurmctld.pid
SlurmdPidFile=$cluster/slurmd.pid
SlurmctldLogFile=$cluster/slurmctld.log
SlurmdLogFile=$cluster/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem_mb * 9 / 10)) State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$cluster/slurm.conf
slurmctld -D -f "$SLURM_CONF" >"$cluster/slurmctld.out" 2>&1 &
daemon_pids+=($!)
slurmd -D -f "$SLURM_CONF" -N "$node" >"$cluster/slurmd.out" 2>&1 &
daemon_pids+=($!)
for _ in $(seq 300); do [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break; sleep 0.1; done
[ "$(sinfo -h -o %t 2>/dev/null)" = idle ] || { tail -20 "$cluster"/*.out; fail "the one-node cluster did not come up"; }

cat >sweep.yaml <<'YAML'
description: the SLURM test's sweep, two points on four items
run:
  dataset_name: openbookqa
  dataset_path: loadgen/samples/openbookqa.jsonl
  max_tokens: 4
  max_concurrency: 2
  num_warmups: 0
  limit: 4
reference: c2c-bf16
points:
  - name: c2c-bf16
    kvwire: {mode: c2c, policy: {codec: bf16}}
  - name: receiver-only
    kvwire: {mode: receiver_only}
YAML
submit=(sbatch --parsable --chdir "$tmp/jobs" --cpus-per-task "$((cpus < 2 ? cpus : 2))"
    --export "ALL,KW_SRC=$src,KW_BUILD=$build")
script=("$src/deploy/slurm/pair-cpu.sbatch" "$tmp/sweep.yaml")

# 1. to the end: the report and clean exits
job=$("${submit[@]}" --wait "${script[@]}") || { cat jobs/*.out 2>/dev/null; fail "the pair job failed"; }
job=${job%%;*}
out=jobs/kvwire-pair-$job
[ "$(cat "$out/status")" = done ] || { cat jobs/kvwire-pair-$job.out; fail "job $job ended $(cat "$out/status")"; }
[ -s "$out/report/index.html" ] || fail "job $job left no report/index.html"
[ "$(tail -n +2 "$out/report/report.csv" | wc -l)" = 2 ] || { cat "$out/report/report.csv"; fail "report.csv lacks the two points"; }
grep -qx 'receiverd exit 0' "$out/daemons.txt" && grep -qx 'sharerd exit 0' "$out/daemons.txt" ||
    { cat "$out/daemons.txt"; fail "the daemons of job $job did not exit cleanly"; }
grep -q 'pair-cpu: done' "jobs/kvwire-pair-$job.out" || fail "job $job's output does not end with done"

# 2. scancel while it serves: both daemons stop cleanly
job=$("${submit[@]}" "${script[@]}" --num-prompts 1000000)
job=${job%%;*}
out=jobs/kvwire-pair-$job
for _ in $(seq 1200); do [ -s "$out/url" ] && break; sleep 0.1; done
[ -s "$out/url" ] || { cat "jobs/kvwire-pair-$job.out" 2>/dev/null; fail "job $job never served"; }
sleep 1 # a few requests in flight
scancel "$job"
for _ in $(seq 600); do [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break; sleep 0.1; done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job still runs after scancel"
[ "$(cat "$out/status")" = cancelled ] || { cat "jobs/kvwire-pair-$job.out"; fail "job $job ended $(cat "$out/status"), not cancelled"; }
grep -qx 'receiverd exit 0' "$out/daemons.txt" && grep -qx 'sharerd exit 0' "$out/daemons.txt" ||
    { cat "$out/daemons.txt" "jobs/kvwire-pair-$job.out"; fail "scancel did not stop the daemons of job $job cleanly"; }
grep -q 'stopped' "$out/sharerd.log" && grep -q 'receiverd: stopped' "$out/receiverd.log" ||
    fail "the daemons of job $job did not log their shutdown"
echo "slurm: ok (job $((job - 1)) done with its report; job $job cancelled: $(tr '\n' ' ' <"$out/daemons.txt"))"
