# Shell helpers shared by the test scripts (sourced, not run).

# Run a command silently, but show its output if it fails.
quiet() {
    local log rc=0
    log=$(mktemp)
    "$@" >"$log" 2>&1 || rc=$?
    if ((rc)); then
        cat "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}
