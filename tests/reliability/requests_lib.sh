# requests_lib.sh: the c2c requests of the fault tests (cli_reliability_faults.sh, cli_reliability_network.sh) and
# how their outcomes are judged, sourced after tests/cli_lib.sh once `url` names receiverd's chat endpoint. Defines
#   now_ms                      the time in ms
#   ask I OUT                   prompt I mod 4 of `prompts` in c2c mode, OUT.json the body; prints the HTTP status,
#                               "refused" when nothing listened on the port (curl's exit status 7), 000 for any other
#                               request without a response
#   reference_answers           every prompt once, fault-free: ref0.txt .. ref3.txt
#   judge I OUT CODE            ok (the fault-free answer, to the byte), "error CODE" (an HTTP error with an error
#                               body), "refused (receiverd down)" when allow_refused=1; anything else fails the test
#   client C N STOP             requests back to back, at least N and until the file STOP exists (so that the load
#                               spans the whole fault however fast the requests are); client-C.txt: start and end
#                               (ms) and the outcome of each; client-C.count: how many it sent
#   recover NAME SINCE PROBES   after the clients: sets recovery_ms, from SINCE to the end of the first good answer
#                               to a request sent after it (the clients', else one of PROBES probes 50 ms apart),
#                               then four more that must all be good
#   underway FROM TO            whether some request of the clients' was under way at some time from FROM to TO (ms):
#                               finished ones from client-C.txt, the one in flight from client-C.cur
#   outcomes NAME FROM TO       every request the two clients sent accounted for, and some of them sent during the
#                               fault (FROM to TO, ms): sets total, ok (count) and errors (a summary)
now_ms() { date +%s%3N; }

ask() {
    local body code rc=0
    body=$(jq -cn --arg p "${prompts[$(($1 % 4))]}" \
        '{messages: [{role: "user", content: $p}], max_tokens: 6, kvwire: {mode: "c2c"}}')
    code=$(curl -s -o "$2.json" -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' -d "$body" \
        "$url") || rc=$?
    [ $rc = 7 ] && code=refused
    echo "$code"
}

reference_answers() {
    local i
    for i in 0 1 2 3; do
        [ "$(ask $i ref$i)" = 200 ] || fail "no fault-free answer to prompt $i: $(cat ref$i.json)"
        jq -r '.choices[0].message.content' ref$i.json >ref$i.txt
    done
}

judge() {
    if [ "$3" = 200 ]; then
        jq -r '.choices[0].message.content' "$2.json" | cmp -s - "ref$(($1 % 4)).txt" ||
            fail "an answer differs from the fault-free one (prompt $(($1 % 4))): $(cat "$2.json")"
        echo ok
    elif [ "$3" = refused ] && [ "${allow_refused:-0}" = 1 ]; then
        echo "refused (receiverd down)"
    elif [ "$3" = 000 ] || [ "$3" = refused ]; then
        fail "request $2 got no response at all ($3)"
    else
        jq -e '.error.message | type == "string"' "$2.json" >/dev/null 2>&1 ||
            fail "HTTP $3 without an error body: $(cat "$2.json")"
        echo "error $3"
    fi
}

client() {
    local c=$1 n=$2 stop=$3 i=0 code t0
    : >"client-$c.txt"
    while [ $i -lt "$n" ] || [ ! -e "$stop" ]; do
        t0=$(now_ms)
        echo "$t0" >"client-$c.cur"
        code=$(ask $((c + i)) "c$c-$i")
        echo "$t0 $(now_ms) $(judge $((c + i)) "c$c-$i" "$code")" >>"client-$c.txt"
        rm -f "client-$c.cur"
        i=$((i + 1))
    done
    echo "$i" >"client-$c.count"
}

recover() {
    local name=$1 since=$2 probes=$3 recovered k=0 i code
    recovered=$(cat client-0.txt client-1.txt | awk -v t="$since" '$1 >= t && $3 == "ok" {print $2}' | sort -n |
        head -n 1)
    for _ in $(seq "$probes"); do
        [ -z "$recovered" ] || break
        k=$((k + 1))
        [ "$(ask $k "rec-$name-$k")" = 200 ] && { recovered=$(now_ms); judge $k "rec-$name-$k" 200 >/dev/null; break; }
        sleep 0.05
    done
    [ -n "$recovered" ] || fail "$name: no good answer $((probes / 20)) s after the fault ended"
    for i in 0 1 2 3; do
        code=$(ask $i "after-$name-$i")
        [ "$code" = 200 ] || fail "$name: request $i after recovery failed ($code): $(cat "after-$name-$i.json")"
        judge $i "after-$name-$i" 200 >/dev/null
    done
    recovery_ms=$((recovered - since))
}

underway() {
    local n
    n=$(cat client-0.txt client-1.txt 2>/dev/null | awk -v a="$1" -v b="$2" '$1 <= b && $2 >= a' | wc -l)
    [ "$n" -gt 0 ] && return 0
    cat client-0.cur client-1.cur 2>/dev/null | awk -v b="$2" '$1 <= b {f = 1} END {exit !f}'
}

outcomes() {
    local sent
    cat client-0.txt client-1.txt | cut -d' ' -f3- >outcomes.txt
    total=$(wc -l <outcomes.txt)
    sent=$(($(cat client-0.count) + $(cat client-1.count)))
    [ "$total" = "$sent" ] || fail "$1: $total of $sent requests accounted for"
    underway "$2" "$3" || fail "$1: no request was under way during the fault"
    ok=$(grep -cx ok outcomes.txt || true)
    errors=$({ grep -v '^ok$' outcomes.txt || true; } | sort | uniq -c | awk '{printf "%s %s x%d, ", $2, $3, $1}')
}
