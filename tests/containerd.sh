#!/usr/bin/env bash
# Print the directory that holds containerd, ctr and containerd-shim-runc-v2
# of one containerd version, for the e2e tests to run against:
#
#   tests/containerd.sh 1.6.20   ->  /usr/bin (Debian 12's, from tests/deps.sh)
#   tests/containerd.sh 1.7.24   ->  /var/cache/wasmlet/containerd/1.7.24/usr/bin
#   tests/containerd.sh 2.1.9    ->  /var/cache/wasmlet/containerd/2.1.9/usr/bin
#
# The newer ones come from Debian's `containerd` package of a newer suite,
# fetched once with apt-get against a private sources list (the machine's own
# apt sources stay as they are) and unpacked into the cache. Run as root.
set -euo pipefail

VERSION=${1:?usage: tests/containerd.sh VERSION (1.6.20, 1.7.24 or 2.1.9)}
CACHE=${WASMLET_CONTAINERD_CACHE:-/var/cache/wasmlet/containerd}

# The Debian suite whose containerd package is this version.
case "$VERSION" in
    1.6.20) SUITE="" ;;  # Debian 12's own, installed by tests/deps.sh
    1.7.24) SUITE=trixie ;;
    2.1.9) SUITE=sid ;;
    *)
        echo "containerd.sh: unsupported containerd version $VERSION (1.6.20, 1.7.24 or 2.1.9)" >&2
        exit 2
        ;;
esac

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# True if DIR/containerd runs and is VERSION ("... 1.7.24~ds1 ...", "... 2.1.9+unknown").
runs_version() {
    local out
    out=$("$1/containerd" --version 2>&1) || return 1
    grep -qE " v?${VERSION//./\\.}([~+ ]|$)" <<<"$out"
}

# The Debian mirror this machine's own apt sources use, e.g.
# http://deb.debian.org/debian: the first URI of an entry for its release.
# Download Debian's containerd package of $SUITE into "$1" and unpack it into "$1/root".
fetch() {
    local work=$1 uri version
    uri=$(mirror_uri)
    if [[ -z "$uri" ]]; then
        echo "containerd.sh: no Debian mirror found in /etc/apt/sources.list.d" >&2
        return 1
    fi
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/sources.list.d"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $SUITE main" \
        >"$work/sources.list"
    # Private sources, lists and cache: apt's own state is left untouched.
    # Only the Packages index is needed, not translations or app metadata.
    local apt_opts=(
        -o Dir::Etc::SourceList="$work/sources.list"
        -o Dir::Etc::SourceParts="$work/sources.list.d"
        -o Dir::State::Lists="$work/lists"
        -o Dir::Cache="$work/cache"
        -o Acquire::Languages=none
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    )
    quiet apt-get "${apt_opts[@]}" update
    # The suite's Debian revision of VERSION, e.g. 1.7.24~ds1-6+deb13u1.
    version=$(apt-cache "${apt_opts[@]}" madison containerd |
        awk -v v="$VERSION" 'index($3, v "~") == 1 || index($3, v "+") == 1 { print $3; exit }')
    if [[ -z "$version" ]]; then
        echo "containerd.sh: Debian $SUITE has no containerd $VERSION any more:" >&2
        apt-cache "${apt_opts[@]}" madison containerd >&2
        return 1
    fi
    # apt-get download writes into the current directory; _apt may not
    # write there, so let root download it.
    (cd "$work" && quiet apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root \
        download "containerd=$version")
    dpkg-deb -x "$work"/containerd_*.deb "$work/root"
}

if [[ -z "$SUITE" ]]; then
    if ! runs_version /usr/bin; then
        echo "containerd.sh: /usr/bin/containerd is not $VERSION: run make deps" >&2
        exit 1
    fi
    echo /usr/bin
    exit 0
fi

BIN_DIR="$CACHE/$VERSION/usr/bin"
if ! runs_version "$BIN_DIR"; then
    mkdir -p "$CACHE"
    # One fetch at a time: a second caller waits and then finds it cached.
    exec 9>"$CACHE/.lock"
    flock 9
    if ! runs_version "$BIN_DIR"; then
        work=$(mktemp -d "$CACHE/.fetch-$VERSION.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        fetch "$work"
        if ! runs_version "$work/root/usr/bin"; then
            echo "containerd.sh: the containerd unpacked from Debian $SUITE is not $VERSION or does not run:" >&2
            "$work/root/usr/bin/containerd" --version >&2 || true
            exit 1
        fi
        rm -rf "${CACHE:?}/$VERSION"
        mv "$work/root" "$CACHE/$VERSION"
    fi
fi
for bin in containerd ctr containerd-shim-runc-v2; do
    if [[ ! -x "$BIN_DIR/$bin" ]]; then
        echo "containerd.sh: $BIN_DIR/$bin is missing" >&2
        exit 1
    fi
done
echo "$BIN_DIR"
