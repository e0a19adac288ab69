#!/usr/bin/env bash
# Runs every check and test of the suite: formatting, lints, unit tests, the
# node-side tests on real loop devices, the end-to-end tests in the lab, the
# official CSI conformance suite (csi-sanity), and a short run of each fuzz
# target; with IMAGE_TEST=1 also builds the container images and runs the
# image test (scripts/images.sh, scripts/image-test.sh).
# Installs what it needs (Debian packages when root). Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step "installing system dependencies"
ensure_packages
ensure_kube_binaries
ensure_inotify_instances
check_disk

step "installing the Python clients of the tests from PyPI (grpcio, kubernetes)"
ensure_python_clients

step "checking formatting (cargo fmt)"
cargo fmt --all -- --check

step "building the workspace (first build takes several minutes)"
cargo build --workspace --all-targets --locked

step "linting (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "running all tests"
if ! command -v kubectl >/dev/null 2>&1; then
    echo "note: kubectl is not installed; the tests that drive the lab with kubectl will fail" >&2
fi
# Tests that attach loop devices and mount filesystems need root.
if [ "$(id -u)" != 0 ]; then
    echo "error: the node-side and lab tests need root (loop devices, mount)" >&2
    exit 1
fi
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-2}" \
    --skip csi_sanity::

step "running the official CSI conformance suite (csi-sanity) against the driver in the lab"
# ../shared/tools/csi-sanity, or CSI_SANITY=/path; without either the test
# says so in one line and passes. (--workspace keeps the features, and so
# the build, of the step above.)
cargo test --workspace --test e2e --locked csi_sanity:: \
    -- --nocapture --test-threads=1

step "fuzzing each parser briefly (cargo fuzz, ${FUZZ_SECONDS:-15}s per target)"
ensure_cargo_fuzz
echo "(the first target builds them all with libFuzzer: several minutes)"
fuzz_log="$(mktemp)"
trap 'rm -f "$fuzz_log"' EXIT
for target in $(cargo fuzz list --fuzz-dir fuzz); do
    echo "fuzzing $target"
    if ! fuzz_cargo fuzz run --fuzz-dir fuzz "$target" -- \
        -max_total_time="${FUZZ_SECONDS:-15}" >"$fuzz_log" 2>&1; then
        tail -n 40 "$fuzz_log"
        echo "error: fuzz target $target failed (the input is under fuzz/artifacts/$target)" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$fuzz_log" || tail -n 1 "$fuzz_log"
done
if [ "${IMAGE_TEST:-0}" = 1 ]; then
    step "building the container images (scripts/images.sh)"
    bash scripts/images.sh
    step "running the image test (scripts/image-test.sh)"
    bash scripts/image-test.sh
else
    # A cold image build (base root filesystems, the release build of the
    # three binaries) takes longer than CI's budget allows on 2 cores.
    echo "container images: skipped (IMAGE_TEST=1 builds them and runs the image test)"
fi
step "all checks passed"
