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

# The Debian mirror the machine's own apt sources use for its release (never
# a host written into this repo).
mirror_uri() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    {
        # deb822 files: a stanza is a run of non-blank lines.
        awk -v want="$codename" '
            FNR == 1 || /^[[:space:]]*$/ { if (uri && hit) print uri; uri = ""; hit = 0 }
            $1 == "URIs:" { uri = $2 }
            $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == want) hit = 1 }
            END { if (uri && hit) print uri }
        ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
        # One-line files: deb [options] URI SUITE COMPONENTS...
        cat /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null |
            sed -E 's/\[[^]]*\]//' |
            awk -v want="$codename" '$1 == "deb" && $3 == want { print $2 }' || true
    } | head -n 1
}
