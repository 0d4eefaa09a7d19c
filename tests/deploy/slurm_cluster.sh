# slurm_cluster.sh: a real SLURM cluster for the deploy tests, sourced after cli_lib.sh:
#   slurm_cluster_start NODES
# starts munged, slurmctld and NODES slurmd (Debian's slurm-wlm and munge) as root, with a slurm.conf and every state
# file under $tmp/cluster and unprivileged ports, exports SLURM_CONF and sets slurm_nodes (the node names) and
# slurm_cpus (CPUs a task may ask for). One node runs on this host's loopback. Two or more nodes are hosts of their
# own: each slurmd runs in a network namespace (its own address on a bridge, its own ports and host name), so the
# jobs' processes on different nodes talk over a real network path between them. slurm_cluster_stop (run by the EXIT
# trap this file installs) cancels the jobs and stops and removes everything; a test may stop one cluster and start
# another. Exits 77 with the reason where this
# machine cannot have such a cluster: not root, packages missing, no network namespaces, or a cluster that does not
# come up (its state and logs printed first; that is the machine's limit, not what the test checks).

slurm_daemon_pids=()
slurm_netns=()
slurm_bridge=
slurm_nodes=()
slurm_cpus=1
slurm_started=0

slurm_cluster_stop() {
    if [ -n "${SLURM_CONF:-}" ]; then scancel --quiet --user=root 2>/dev/null || true; fi
    local p ns
    for p in "${slurm_daemon_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${slurm_daemon_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in "${slurm_netns[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    [ -z "$slurm_bridge" ] || ip link del "$slurm_bridge" 2>/dev/null || true
    slurm_daemon_pids=() slurm_netns=() slurm_bridge= slurm_nodes=()
    unset SLURM_CONF
}
trap 'slurm_cluster_stop; rm -rf "$tmp"' EXIT

# slurm_skip REASON: print the cluster's state and logs, then skip
slurm_skip() {
    echo "nodes: $(sinfo -h -N -o '%N %t %E' 2>&1 | tr '\n' ' ')"
    local f
    for f in "$slurm_cluster"/*.out "$slurm_cluster"/*.log; do
        [ -s "$f" ] && { echo "== $f"; tail -n 30 "$f"; }
    done
    echo "SKIP: $1"
    exit 77
}

# slurm_free_port: an unprivileged TCP port below the kernel's ephemeral range (so no outgoing connection takes it
# between here and slurmctld's bind) that no socket on this host uses in any state: a port chosen from the whole range
# once met "Address already in use" from slurmctld after a test suite's many loopback connections
slurm_free_port() {
    local p lo
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    [ "$lo" -gt 10100 ] || lo=32768
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (lo - 10000)))
        [ -z "$(ss -Htan "sport = :$p")" ] && { echo $p; return; }
    done
    fail "no free port"
}

# slurm_in_node I CMD...: CMD on node I (its namespace and host name when the cluster has several nodes), in place of
# the calling shell (exec), so that the pid of a `slurm_in_node ... &` is the daemon's own and slurm_cluster_stop's
# TERM reaches it: a one-node cluster's slurmd once outlived its test as the child of a killed subshell. Run it in the
# background only.
slurm_in_node() {
    local i=$1
    shift
    if [ ${#slurm_netns[@]} -eq 0 ]; then
        exec "$@"
    else
        exec ip netns exec "${slurm_netns[$i]}" unshare --uts sh -c 'hostname "$0" && exec "$@"' "${slurm_nodes[$i]}" "$@"
    fi
}

slurm_cluster_start() {
    local n_nodes=$1 b i
    slurm_started=$((slurm_started + 1))
    slurm_cluster=$tmp/cluster-$slurm_started
    [ "$(id -u)" = 0 ] || { echo "SKIP: the SLURM cluster is started as root (munged, slurmctld, slurmd)"; exit 77; }
    for b in munged slurmctld slurmd sbatch squeue scancel sinfo scontrol srun ss ip unshare; do
        command -v $b >/dev/null ||
            { echo "SKIP: $b is not installed (apt-get install slurmctld slurmd slurm-client munge iproute2)"; exit 77; }
    done
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    [ "$mem_mb" -ge 4000 ] || { echo "SKIP: the jobs ask for 3 GiB, this machine has $mem_mb MiB"; exit 77; }
    mkdir -p "$slurm_cluster/state"

    dd if=/dev/urandom of="$slurm_cluster/munge.key" bs=1024 count=1 2>/dev/null
    chmod 600 "$slurm_cluster/munge.key"
    munged -F -f -S "$slurm_cluster/munge.sock" --key-file="$slurm_cluster/munge.key" \
        --pid-file="$slurm_cluster/munged.pid" --seed-file="$slurm_cluster/munged.seed" \
        --log-file="$slurm_cluster/munged.log" >"$slurm_cluster/munged.out" 2>&1 &
    slurm_daemon_pids+=($!)
    for _ in $(seq 100); do [ -S "$slurm_cluster/munge.sock" ] && break; sleep 0.1; done
    [ -S "$slurm_cluster/munge.sock" ] || slurm_skip "munged did not start"

    # The hardware as slurmd itself detects it (CPUs, sockets, cores, threads), so that slurmctld never finds a
    # node's configuration differing from its hardware and drains it; memory is capped below what it detects.
    local hardware controller controller_addr
    hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //; s/ *RealMemory=[0-9]*//')
    [ -n "$hardware" ] || hardware="CPUs=$(nproc)"
    slurm_cpus=$(nproc)
    controller=$(hostname -s)
    local node_lines=() addrs=()
    if [ "$n_nodes" -eq 1 ]; then
        controller_addr=127.0.0.1
        slurm_nodes=("$controller")
        addrs=(127.0.0.1)
    else
        # a bridge on this host (the controller's address) and one namespace per node, joined to it by a veth pair
        local net=10.$((100 + RANDOM % 100)).$((RANDOM % 250))
        slurm_bridge=kwbr$$
        controller_addr=$net.1
        ip link add "$slurm_bridge" type bridge && ip link set "$slurm_bridge" up &&
            ip addr add "$controller_addr/24" dev "$slurm_bridge" || slurm_skip "no bridge (ip link add type bridge)"
        for ((i = 0; i < n_nodes; i++)); do
            local ns=kwns$$-$i
            ip netns add "$ns" || slurm_skip "no network namespaces (ip netns add)"
            slurm_netns+=("$ns")
            ip link add "kwv$$-$i" type veth peer name eth0 netns "$ns" &&
                ip link set "kwv$$-$i" master "$slurm_bridge" up &&
                ip netns exec "$ns" ip addr add "$net.$((i + 2))/24" dev eth0 &&
                ip netns exec "$ns" ip link set eth0 up && ip netns exec "$ns" ip link set lo up ||
                slurm_skip "no veth pair into a namespace"
            slurm_nodes+=("kwnode$((i + 1))")
            addrs+=("$net.$((i + 2))")
        done
    fi
    for ((i = 0; i < n_nodes; i++)); do
        node_lines+=("NodeName=${slurm_nodes[$i]} NodeAddr=${addrs[$i]} $hardware RealMemory=$((mem_mb * 8 / 10 / n_nodes))")
    done
    cat >"$slurm_cluster/slurm.conf" <<CONF
ClusterName=kwtest
SlurmctldHost=$controller($controller_addr)
SlurmctldPort=$(slurm_free_port)
SlurmdPort=$(slurm_free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$slurm_cluster/munge.sock
CredType=cred/munge
StateSaveLocation=$slurm_cluster/state
SlurmdSpoolDir=$slurm_cluster/spool-%n
SlurmctldPidFile=$slurm_cluster/slurmctld.pid
SlurmdPidFile=$slurm_cluster/slurmd-%n.pid
SlurmctldLogFile=$slurm_cluster/slurmctld.log
SlurmdLogFile=$slurm_cluster/slurmd-%n.log
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
$(printf '%s\n' "${node_lines[@]}")
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    # slurmd of Debian 12 (22.05) loads a cgroup plugin even for proctrack/linuxproc and task/none; left to
    # autodetect, it refuses to start where /sys/fs/cgroup is not mounted (a network namespace's fresh /sys, some
    # CI machines) or holds cgroup v2 without a D-Bus. The v1 plugin starts everywhere, and nothing here uses it.
    echo "CgroupPlugin=cgroup/v1" >"$slurm_cluster/cgroup.conf"
    for ((i = 0; i < n_nodes; i++)); do mkdir -p "$slurm_cluster/spool-${slurm_nodes[$i]}"; done
    export SLURM_CONF=$slurm_cluster/slurm.conf
    slurmctld -D -f "$SLURM_CONF" >"$slurm_cluster/slurmctld.out" 2>&1 &
    slurm_daemon_pids+=($!)
    for ((i = 0; i < n_nodes; i++)); do
        slurm_in_node $i slurmd -D -f "$SLURM_CONF" -N "${slurm_nodes[$i]}" \
            >"$slurm_cluster/slurmd-${slurm_nodes[$i]}.out" 2>&1 &
        slurm_daemon_pids+=($!)
    done
    local want
    want=$(printf 'idle\n%.0s' $(seq "$n_nodes"))
    for _ in $(seq 900); do [ "$(sinfo -h -N -o %t 2>/dev/null)" = "$want" ] && break; sleep 0.1; done
    [ "$(sinfo -h -N -o %t 2>/dev/null)" = "$want" ] ||
        slurm_skip "the $n_nodes-node SLURM cluster did not come up on this machine within 90 s (state and logs above)"
}
