#!/usr/bin/env bash
# cli_reliability_network.sh: sharerd on a host of its own (a network namespace joined to this one by a veth pair)
# and receiverd here, so that the network between them can be cut for real: a partition (an nftables rule in the
# sharer's namespace dropping every packet of its port, held 3 s while two clients send c2c requests), then the
# sharer's link limited to 10 Mbit/s (tc tbf on its side of the veth). Through the partition every request is
# answered (an answer identical to the fault-free one, or an HTTP error with an error body), the time from the
# partition's end to the first good answer is measured, and the requests after it succeed. Under the 10 Mbit/s cut
# the answers stay identical, and tbf's own counters show it held packets back (the limit was in force); the transfer
# times are printed. Skipped (77) without root, nft, tc or network namespaces.
. "$(dirname "$0")/../cli_lib.sh" "$@"
models=$build/tests/daemons/models
[ -d "$models/tiny-qwen3" ] || fail "no tiny models in $models (the test_daemons_models fixture makes them)"
[ "$(id -u)" = 0 ] || { echo "SKIP: network namespaces, nftables and tc need root"; exit 77; }
for b in ip nft tc; do
    command -v $b >/dev/null || { echo "SKIP: $b is not installed (apt-get install iproute2 nftables)"; exit 77; }
done
. "$src/tests/deploy/daemon_lib.sh"
ns=kwrel$$
veth=kwrv$$
net=10.$((100 + RANDOM % 100)).$((RANDOM % 250))
network_cleanup() {
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$veth" 2>/dev/null || true
    daemon_lib_cleanup
}
trap network_cleanup EXIT
ip netns add "$ns" || { echo "SKIP: no network namespaces (ip netns add)"; exit 77; }
ip link add "$veth" type veth peer name eth0 netns "$ns" && ip addr add "$net.1/24" dev "$veth" &&
    ip link set "$veth" up && ip netns exec "$ns" ip addr add "$net.2/24" dev eth0 &&
    ip netns exec "$ns" ip link set eth0 up && ip netns exec "$ns" ip link set lo up ||
    { echo "SKIP: no veth pair into a namespace"; exit 77; }

start sharer ip netns exec "$ns" "$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" \
    --listen.host=0.0.0.0 --listen.port=0 --models.0.path="$models/tiny-qwen2" \
    --models.1.path="$models/tiny-qwen3" --compute.threads=1
sharer_port=$port
start receiver "$build/receiver/receiverd" --config "$src/deploy/config/receiverd.tiny.yaml" --http.port=0 \
    --model.path="$models/tiny-qwen3" --fusers.0.path="$models/tiny-fuser" --sharers.0.host="$net.2" \
    --sharers.0.port="$sharer_port" --compute.threads=1 --sharer.request_timeout_ms=2000 \
    --sharer.connect_timeout_ms=1000 --sharer.reconnect_ms=100
url=http://127.0.0.1:$port/v1/chat/completions
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" | jq -e '.status == "ok"' >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health" | jq -e '.status == "ok"' >/dev/null || fail "receiverd never reached sharerd"

prompts=("Name a red planet." "What is two plus two?" "Say hello in French." "Which is heavier, iron or air?")
. "$src/tests/reliability/requests_lib.sh"
reference_answers

# 1. partition
client 0 12 stop &
c0=$!
client 1 12 stop &
c1=$!
sleep 0.3
cut_at=$(now_ms)
ip netns exec "$ns" nft add table inet kwpart
ip netns exec "$ns" nft add chain inet kwpart input '{ type filter hook input priority 0; }'
ip netns exec "$ns" nft add rule inet kwpart input tcp dport "$sharer_port" drop
sleep 3
ip netns exec "$ns" nft delete table inet kwpart
healed=$(now_ms)
touch stop
wait $c0 && wait $c1 || fail "a client failed"
recover partition "$healed" 300
outcomes partition "$cut_at" "$healed"
[ "$ok" -lt "$total" ] || fail "every request succeeded through a 3 s partition: the rule was not in force"
echo "partition (nftables drop, 3 s): $total/$total answered: $ok identical to the fault-free answers, errors: ${errors:-none};" \
    "recovered $recovery_ms ms after it ended; 4/4 good after"

# 2. 10 Mbit/s on the sharer's side of the link, with long prompts (shares of about 150 kB, far beyond tbf's burst)
long=$(printf 'The river runs past the old mill and under the stone bridge. %.0s' $(seq 50))
prompts=("$long Where does the river run?" "$long What is under the bridge?" "$long Name the old building."
    "$long What is the bridge made of?")
reference_answers
free_ms=$(jq '.kvwire.timings_ms.transfer' ref0.json)
ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate 10mbit burst 16kb latency 500ms
slowest=
for i in 0 1 2 3; do
    code=$(ask $i "tbf-$i")
    [ "$(judge $i "tbf-$i" "$code")" = ok ] || fail "a request failed under the 10 Mbit/s limit: $(cat "tbf-$i.json")"
    bytes=$(jq '.kvwire.bytes.socket_in' "tbf-$i.json")
    ms=$(jq '.kvwire.timings_ms.transfer' "tbf-$i.json")
    need=$(jq -n "($bytes - 16384) * 8 / 10000")
    [ "$bytes" -gt 65536 ] || fail "a $bytes-byte share is too small to cross the tbf burst"
    slowest="$bytes B in $(printf %.1f "$ms") ms (at least $(printf %.1f "$need") ms at 10 Mbit/s; $(printf %.1f "$free_ms") ms without the limit)"
done
# tbf held packets back (its overlimits count) while carrying the shares: the limit was in force
ip netns exec "$ns" tc -s qdisc show dev eth0 >tbf.stats
held=$(sed -n 's/.*overlimits \([0-9]*\).*/\1/p' tbf.stats | head -n 1)
[ "${held:-0}" -gt 0 ] || { cat tbf.stats; fail "tbf never held a packet back: the limit was not in force"; }
ip netns exec "$ns" tc qdisc del dev eth0 root
echo "10 Mbit/s (tc tbf, $held packets held back): 4/4 answers identical to the fault-free ones; e.g. $slowest"
