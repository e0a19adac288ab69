#!/usr/bin/env bash
# Runs the lab demo: a guest PVC mirrored to the infra cluster, hotplugged,
# formatted, mounted and written; a guest LoadBalancer Service mirrored and
# given an address. Installs what it needs. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step "installing system dependencies"
ensure_packages
ensure_kube_binaries
ensure_inotify_instances

step "building the suite (first build takes several minutes)"
cargo build --workspace --bins --locked

step "running the demo"
exec target/debug/lab demo "$@"
