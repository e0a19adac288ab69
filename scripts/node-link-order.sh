#!/usr/bin/env bash
# Regenerates csi-driver/link/node.order, the order in which a release link
# lays out the functions of kubevirt-csi-driver: first those the node plugin
# runs from its start until it is at rest, then those its calls run, then
# everything else (the controller) in the compiler's order.
#
# Why: the kernel maps an executable's cached pages in 64 KiB blocks around
# each one touched, so the code a node plugin has run counts in its RSS
# block by block. Left in the compiler's order, the few thousand functions
# it runs are spread over nearly every block of the binary; side by side,
# they fill a few. The RSS target of the node plugin depends on it.
#
# How: the release node benchmark runs the plugin under callgrind, which
# names every function it executes; the names that are symbols of the
# binary, in first-seen order, are the order file (for the two ways the
# driver is built; see below). build.rs hands it to the
# linker (lld --symbol-ordering-file) in release builds. The names stay
# valid across source edits; a new compiler or dependency version renames
# some, which costs RSS, not correctness: rerun this script then.
#
# Needs root (the benchmark attaches loop devices) and valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" != 0 ]; then
    echo "error: the node benchmark needs root (loop devices, mount)" >&2
    exit 1
fi
step "installing system dependencies"
ensure_packages
if ! command -v valgrind >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing valgrind"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    else
        echo "error: valgrind is required" >&2
        exit 1
    fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
release="${CARGO_TARGET_DIR:-target}/release"
binary="$release/kubevirt-csi-driver"
callgrind="$(command -v valgrind) --tool=callgrind --demangle=no --compress-strings=no"

# The names of the functions each profile saw that the binary defines, in
# first-seen order.
functions() {
    sed -n 's/^c\{0,1\}fn=//p' "$1" |
        awk 'NR == FNR { defined[$0] = 1; next } defined[$0] && !seen[$0]++' "$2" -
}

# Profiles the driver as last built, from start to rest and through every
# call, into $work/$1.rest and $work/$1.calls.
profile() {
    nm --defined-only "$binary" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$work/$1.defined"
    echo "profiling the plugin from start to rest (under callgrind)"
    "$release/examples/node_bench" --rounds 0 \
        --wrapper "$callgrind --callgrind-out-file=$work/$1.rest.out" >/dev/null
    echo "profiling the plugin's calls"
    "$release/examples/node_bench" --rounds 3 \
        --wrapper "$callgrind --callgrind-out-file=$work/$1.calls.out" >/dev/null
    functions "$work/$1.rest.out" "$work/$1.defined" >"$work/$1.rest"
    functions "$work/$1.calls.out" "$work/$1.defined" >"$work/$1.calls"
    echo "$(wc -l <"$work/$1.rest") functions until at rest, $(wc -l <"$work/$1.calls") in all"
}

# Cargo unifies features over the packages a build selects, and features
# are part of the symbol names: a workspace build (the README's) and a
# build of the driver alone (`-p`, as an image build may do) name their
# functions differently. The order lists both sets, phase by phase, so
# either binary finds its functions at rest side by side.
step "building the release workspace (fat LTO: about ten minutes)"
cargo build --release --locked --bins --examples
step "profiling the workspace build of the driver"
profile workspace
step "building the driver alone (cargo build -p kubevirt-csi-driver)"
cargo build --release --locked -p kubevirt-csi-driver
step "profiling the driver built alone"
profile alone

cat "$work/workspace.rest" "$work/alone.rest" "$work/workspace.calls" "$work/alone.calls" |
    awk '!seen[$0]++' >"$work/node.order"
mkdir -p csi-driver/link
mv "$work/node.order" csi-driver/link/node.order
echo "csi-driver/link/node.order: $(wc -l <csi-driver/link/node.order) functions"
echo "rebuild the release driver to link in this order"
