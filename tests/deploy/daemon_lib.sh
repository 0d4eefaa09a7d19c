# daemon_lib.sh: the daemon helpers of the deploy test scripts, sourced after tests/cli_lib.sh. The daemons started
# are killed on exit (with the temporary folder removed, as cli_lib.sh does). Defines
#   start NAME PROGRAM ARGS...  runs PROGRAM ARGS in the background (stdout and stderr in NAME.log) and waits until it
#                               listens: sets port to its port (--runtime.ready_file) and appends its pid to pids
#   stop PID                    SIGTERM, and a clean exit (status 0) or the test fails
pids=()
daemon_lib_cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap daemon_lib_cleanup EXIT

start() {
    local name=$1 program=$2
    shift 2
    rm -f "$tmp/$name.ready" # a restart waits for the new process, not the old one's file
    "$program" "$@" --runtime.ready_file="$tmp/$name.ready" >"$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 1200); do
        if [ -s "$name.ready" ]; then
            port=$(sed -n 's/^port=//p' "$name.ready")
            return 0
        fi
        kill -0 $! 2>/dev/null || { cat "$name.log"; fail "$name exited before listening"; }
        sleep 0.1
    done
    fail "$name did not start listening"
}

stop() {
    kill -TERM "$1"
    wait "$1" || fail "a daemon did not exit cleanly (status $?)"
}
