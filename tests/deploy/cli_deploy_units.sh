#!/usr/bin/env bash
# cli_deploy_units.sh: the systemd units of deploy/systemd pass `systemd-analyze verify` (syntax, known keys, an
# executable ExecStart) without a word of complaint, and `systemd-analyze security --offline` rates their hardening
# at most 3.0 ("OK"). The build is installed (`cmake --install`) into a temporary prefix, which the install writes into
# the units and drop-ins in place of deploy/'s /usr/local: ExecStart is the installed binary, and the config it names
# is installed and loads. A unit with an unknown key must fail the same check (the
# check itself is tested). The install also makes the tiny models in share/kvwire/models (under DESTDIR when set),
# and the installed sharerd and receiverd serve a chat completion from the installed configs and models alone
# (ephemeral loopback ports). The SLURM job kit is installed too: the one-node job script, run as a plain script (no
# SLURM) with KW_SRC the installed share/kvwire and KW_BIN the installed bin/, makes its tiny models, serves, sweeps
# two points and writes its report without a checkout. Skipped (77) when systemd-analyze is not installed.
. "$(dirname "$0")/../cli_lib.sh" "$@"
. "$(dirname "$0")/daemon_lib.sh"
if ! command -v systemd-analyze >/dev/null; then
    echo "SKIP: systemd-analyze is not installed (apt-get install systemd)"
    exit 77
fi
# verify UNIT_FILE: 0 when systemd-analyze accepts it and says nothing; its output is in verify.log
verify() {
    (cd "$(dirname "$1")" && systemd-analyze verify --man=no "./$(basename "$1")") >verify.log 2>&1 || return 1
    [ ! -s verify.log ]
}
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >install.log || { cat install.log; fail "cmake --install failed"; }
for unit in sharerd receiverd; do
    installed=$prefix/lib/systemd/system/$unit.service
    [ -f "$installed" ] || fail "cmake --install did not install $unit.service"
    sed "s#/usr/local/#$prefix/#g" "$src/deploy/systemd/$unit.service" >expected.service
    cmp -s "$installed" expected.service ||
        fail "the installed $unit.service is not deploy/'s with the prefix $prefix written in"
    mkdir -p "$unit"
    cp "$installed" "$unit/$unit.service"
    exec_start=$(sed -n 's/^ExecStart=//p' "$unit/$unit.service")
    set -- $exec_start
    [ "$1" = "$prefix/bin/$unit" ] && [ -x "$1" ] || fail "$unit.service: ExecStart $1 is not the installed $unit"
    [ "${2:-}" = --config ] && [ -f "${3:-}" ] || fail "$unit.service: ExecStart names no installed config"
    "$1" --config "$3" --print-config >config.yaml || fail "$unit.service: its config $3 does not load"
    verify "$unit/$unit.service" || { cat verify.log; fail "systemd-analyze verify rejects $unit.service"; }
    for key in Type=notify WatchdogSec= 'ExecReload=/bin/kill -HUP $MAINPID' DynamicUser=yes ProtectSystem=strict \
        ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes MemoryMax= DevicePolicy=closed \
        'DeviceAllow=char-nvidia-frontend rw' StandardError=journal; do
        grep -qF -- "$key" "$unit/$unit.service" || fail "$unit.service lacks $key"
    done
    grep -qx 'CapabilityBoundingSet=' "$unit/$unit.service" ||
        fail "$unit.service: the capability bounding set is not empty"
    (cd "$unit" && systemd-analyze security --offline=true --threshold=30 "./$unit.service") >security.log 2>&1 || {
        tail -5 security.log
        fail "$unit.service: exposure above 3.0 (systemd-analyze's threshold 30 is 3.0)"
    }
    echo "$unit.service: $(grep -o 'Overall exposure level.*' security.log)"
    # with the TLS drop-in (as DEPLOY.md enables it): still valid, ExecStart replaced, the key a credential
    dropin=$prefix/share/kvwire/systemd/$unit.service.d/tls.conf
    [ -f "$dropin" ] || fail "cmake --install did not install the example $unit.service.d/tls.conf"
    mkdir -p "$unit/$unit.service.d"
    ! grep -q /usr/local/ "$dropin" || fail "the installed $unit tls.conf still names /usr/local"
    cp "$dropin" "$unit/$unit.service.d/tls.conf"
    verify "$unit/$unit.service" ||
        { cat verify.log; fail "systemd-analyze verify rejects $unit.service with tls.conf"; }
    grep -q "^LoadCredential=.*key:$prefix/etc/kvwire/tls/" "$unit/$unit.service.d/tls.conf" ||
        fail "$unit tls.conf does not load the key as a credential"
    tls_config=$(sed -n 's/^ExecStart=.*--config \([^ ]*\).*/\1/p' "$unit/$unit.service.d/tls.conf")
    [ -f "$tls_config" ] || fail "$unit tls.conf names $tls_config, which is not installed"
    rm -r "$unit/$unit.service.d"
    # the check catches a broken unit
    sed 's/^WatchdogSec=/NoSuchKey=1\nWatchdogSec=/' "$unit/$unit.service" >"$unit/broken.service"
    ! verify "$unit/broken.service" || fail "systemd-analyze verify accepted a unit with an unknown key"
done

# the tiny models, and the installed configs serving them
models=$prefix/share/kvwire/models
for m in tiny-qwen3 tiny-qwen2; do
    [ -s "$models/$m/model.safetensors" ] && [ -s "$models/$m/tokenizer.json" ] ||
        fail "cmake --install did not make the model $m in $models"
done
[ -s "$models/tiny-fuser/config.json" ] || fail "cmake --install did not make the fuser in $models"
[ -z "$(find "$models" ! -perm -o+r)" ] || fail "some installed model files are not readable by every user"
start sharer "$prefix/bin/sharerd" --config "$prefix/etc/kvwire/sharerd.yaml" --listen.host=127.0.0.1 \
    --listen.port=0 --compute.threads=1
sharer_pid=${pids[-1]}
grep -q "loading model tiny-qwen2 from $prefix/.*share/kvwire/models/tiny-qwen2" sharer.log ||
    { cat sharer.log; fail "the installed sharerd.yaml does not read the installed tiny-qwen2"; }
# receiverd with the unit's environment, as systemd would start it
unit_env=$(sed -n 's/^Environment=//p' "$prefix/lib/systemd/system/receiverd.service")
[ -z "$unit_env" ] || fail "receiverd.service sets an environment: '$unit_env' (the CPU threads' spin is automatic)"
start receiver env -u KW_CPU_SPIN_US "$prefix/bin/receiverd" --config "$prefix/etc/kvwire/receiverd.yaml" \
    --http.host=127.0.0.1 \
    --http.port=0 --sharers.0.port="$port" --compute.threads=1 --sharer.reconnect_ms=100
receiver_pid=${pids[-1]}
grep -q "loading fuser tiny-fuser from $prefix/.*share/kvwire/models/tiny-fuser" receiver.log ||
    { cat receiver.log; fail "the installed receiverd.yaml does not read the installed tiny-fuser"; }
for _ in $(seq 600); do
    curl -s "http://127.0.0.1:$port/health" | jq -e '.status == "ok"' >/dev/null && break
    sleep 0.1
done
curl -s "http://127.0.0.1:$port/health" | jq -e '.cpu_wait | startswith("auto spin")' >/dev/null ||
    fail "receiverd's /health does not report the automatic CPU waiting: $(curl -s "http://127.0.0.1:$port/health")"
curl -s -X POST "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":4}' >reply.json
jq -e '.kvwire.mode == "c2c" and .kvwire.bytes.blob > 0' reply.json >/dev/null ||
    { cat reply.json receiver.log; fail "the installed daemons do not serve c2c from the installed models"; }
stop $receiver_pid
stop $sharer_pid
pids=()
# the SLURM job kit: the one-node script outside SLURM, from the install alone (no checkout in reach)
kit=$prefix/share/kvwire
for f in deploy/slurm/kw-pair.sh deploy/slurm/pair-one-gpu.sbatch deploy/slurm/pair-two-nodes.sbatch \
    deploy/config/sharerd.tiny.yaml models/tokenizers/qwen3/tokenizer.json loadgen/sweeps/demo.yaml \
    loadgen/samples/openbookqa.jsonl; do
    [ -s "$kit/$f" ] || fail "cmake --install did not install the job kit's $f"
done
[ -x "$kit/deploy/slurm/pair-one-gpu.sbatch" ] || fail "the installed job scripts are not executable"
mkdir -p kit-run
(cd kit-run && env -u KW_BUILD KW_SRC="$kit" KW_BIN="$prefix/bin" KW_OUT="$tmp/kit-out" SLURM_CPUS_PER_TASK=1 \
    bash "$kit/deploy/slurm/pair-one-gpu.sbatch" --cpu "$src/tests/deploy/pair_sweep.yaml") >kit.log 2>&1 ||
    { cat kit.log kit-out/*.log 2>/dev/null | tail -40; fail "the installed one-node job script failed"; }
[ "$(cat kit-out/status)" = done ] && [ -s kit-out/report/report.csv ] && [ -s kit-out/report/index.html ] ||
    { cat kit.log; fail "the installed job script did not finish with a report"; }
echo "job kit: $(tail -1 kit.log)"
# DESTDIR: everything under it, the models too
DESTDIR=$tmp/dest cmake --install "$build" --prefix /opt/kvwire-test >install-destdir.log ||
    { cat install-destdir.log; fail "cmake --install with DESTDIR failed"; }
[ -s dest/opt/kvwire-test/share/kvwire/models/tiny-fuser/config.json ] && [ ! -e /opt/kvwire-test ] ||
    fail "cmake --install did not make the models under DESTDIR"
grep -q '^ExecStart=/opt/kvwire-test/bin/sharerd ' dest/opt/kvwire-test/lib/systemd/system/sharerd.service ||
    fail "under DESTDIR the unit must name the prefix, not the staging folder"
echo "units: ok (models: $(ls "$models" | tr '\n' ' '))"
