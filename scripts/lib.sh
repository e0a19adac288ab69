# Shared helpers of the README commands.

step() { printf '\n==> %s\n' "$*"; }

# Installs the Debian packages "$@" (as root, with apt), or says how to.
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $*"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "error: missing packages $*; install them (as root: apt-get install $*)" >&2
        return 1
    fi
}

# Debian packages the suite uses at run time: mkfs/resize tools, losetup, blkid.
ensure_packages() {
    local need=()
    command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
    command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
    command -v losetup >/dev/null 2>&1 || need+=(mount)
    command -v blkid >/dev/null 2>&1 || need+=(util-linux)
    # The lab's clusters keep their objects in etcd (Debian's etcd-server).
    command -v etcd >/dev/null 2>&1 || [ -n "${ETCD_BIN:-}" ] || need+=(etcd-server)
    # The lab's network namespace: its loopback device and local routes.
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    # Checks the certificates the manager issues for hosted control planes.
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    if [ ${#need[@]} -eq 0 ]; then
        echo "system packages present"
    else
        apt_install "${need[@]}" || return 1
    fi
    command -v cargo >/dev/null 2>&1 || { echo "error: cargo is required (https://rustup.rs)" >&2; return 1; }
}

# Each cluster of the lab holds about ten inotify instances (kube-apiserver
# and kube-controller-manager watch their certificate and token files), and
# the manager's tests run a dozen clusters at once: the per-user limit
# (fs.inotify.max_user_instances, often 128) is raised to 1024 when lower.
ensure_inotify_instances() {
    local want=1024 have
    have=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
    if [ "$have" -ge "$want" ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && echo "$want" >/proc/sys/fs/inotify/max_user_instances 2>/dev/null; then
        echo "raised fs.inotify.max_user_instances from $have to $want (the lab's control planes watch their certificates)"
    else
        echo "warning: fs.inotify.max_user_instances is $have; the lab needs about $want (as root: sysctl -w fs.inotify.max_user_instances=$want)" >&2
    fi
}

# The lab's Kubernetes control plane: kube-apiserver and
# kube-controller-manager of KUBE_VERSION, from KUBE_BIN_DIR, else
# ../shared/tools/<name>.gz beside the repository (the lab unpacks them),
# else PATH; else the official release binaries are downloaded into
# <target>/tools and checked against their published SHA-256 sums, and
# KUBE_BIN_DIR is exported to point there.
KUBE_VERSION=1.32.13
ensure_kube_binaries() {
    local names=(kube-apiserver kube-controller-manager kube-scheduler) missing=() name
    for name in "${names[@]}"; do
        if [ -n "${KUBE_BIN_DIR:-}" ] && [ -x "$KUBE_BIN_DIR/$name" ]; then continue; fi
        if [ -f "../shared/tools/$name.gz" ]; then continue; fi
        if command -v "$name" >/dev/null 2>&1; then continue; fi
        missing+=("$name")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "Kubernetes control plane binaries present"
        return 0
    fi
    local dir base
    dir="$(pwd)/${CARGO_TARGET_DIR:-target}/tools"
    base="https://dl.k8s.io/release/v$KUBE_VERSION/bin/linux/amd64"
    mkdir -p "$dir"
    for name in "${missing[@]}"; do
        echo "downloading $name v$KUBE_VERSION"
        if ! curl -fsSL -o "$dir/$name" "$base/$name" ||
            ! curl -fsSL -o "$dir/$name.sha256" "$base/$name.sha256"; then
            rm -f "$dir/$name" "$dir/$name.sha256"
            echo "error: $name v$KUBE_VERSION is needed and could not be downloaded; put the Kubernetes v$KUBE_VERSION server binaries in a directory and set KUBE_BIN_DIR to it" >&2
            return 1
        fi
        if ! echo "$(cat "$dir/$name.sha256")  $dir/$name" | sha256sum --check --quiet; then
            rm -f "$dir/$name"
            echo "error: $name v$KUBE_VERSION does not match its published checksum" >&2
            return 1
        fi
        chmod +x "$dir/$name"
    done
    KUBE_BIN_DIR="$dir"
    export KUBE_BIN_DIR
}

# The Python clients of the tests, from PyPI, in one venv under the target
# dir: grpcio (gRPC C-core; csi-driver/tests/python_grpcio.rs) and the
# official Kubernetes client `kubernetes` (scripts/python-client-check.py,
# run by the lab's client test). Exports CSI_TEST_PYTHON and LAB_TEST_PYTHON,
# its python. Debian's python3 and python3-venv are installed when missing
# (as root).
ensure_python_clients() {
    local venv="${CARGO_TARGET_DIR:-target}/python-clients"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3 python3-venv || return 1
    fi
    if ! "$venv/bin/python" -c 'import grpc, kubernetes' >/dev/null 2>&1; then
        echo "installing grpcio and kubernetes from PyPI into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            'grpcio>=1.57' 'kubernetes>=31'
    fi
    CSI_TEST_PYTHON="$(cd "$venv" && pwd)/bin/python"
    LAB_TEST_PYTHON="$CSI_TEST_PYTHON"
    export CSI_TEST_PYTHON LAB_TEST_PYTHON
    "$CSI_TEST_PYTHON" -c 'import grpc, kubernetes; print("grpcio", grpc.__version__, "and kubernetes", kubernetes.__version__, "for the Python client tests")'
}

# cargo-fuzz, installed from crates.io when missing.
ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz (cargo install, about two minutes)"
        cargo install cargo-fuzz --locked --quiet
    fi
}

# cargo for the fuzz targets: libFuzzer's instrumentation needs nightly
# flags; use a nightly toolchain when rustup has one, else let the stable
# compiler accept them.
fuzz_cargo() {
    if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        cargo +nightly "$@"
    else
        RUSTC_BOOTSTRAP=1 cargo "$@"
    fi
}

# Free space where the build goes: a full test run needs about 8 GB (debug
# build, fuzz build); a linker that runs out of room dies with SIGBUS, so
# say it up front.
check_disk() {
    local dir="${CARGO_TARGET_DIR:-target}" avail_kb
    mkdir -p "$dir"
    avail_kb=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
    echo "free disk for $dir: $((avail_kb / 1024 / 1024)) GB"
    if [ "${avail_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
        echo "warning: less than 10 GB free; the build may run out of room (a linker dying with SIGBUS is the sign)" >&2
    fi
}

# podman, runc and mmdebstrap (Debian packages, installed when missing and
# root), and a podman configuration of our own in $CONTAINERS_CONF (under
# the target dir; /etc/containers is not touched): the runc runtime with
# cgroupfs (crun refuses this machine's hybrid cgroup v1 layout) and rlimits
# this machine lets runc set.
ensure_podman() {
    local need=()
    command -v podman >/dev/null 2>&1 || need+=(podman)
    command -v runc >/dev/null 2>&1 || need+=(runc)
    command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
    if [ ${#need[@]} -eq 0 ]; then
        echo "podman $(podman --version | awk '{ print $3 }'), runc, mmdebstrap present"
    else
        apt_install "${need[@]}" || return 1
    fi
    local dir="${CARGO_TARGET_DIR:-target}/images"
    mkdir -p "$dir"
    CONTAINERS_CONF="$(cd "$dir" && pwd)/containers.conf"
    cat >"$CONTAINERS_CONF" <<'CONF'
# Written by scripts/lib.sh (ensure_podman). runc: crun refuses the hybrid
# cgroup v1 layout of the build machines; podman 4.3 accepts cgroups
# "disabled" only with crun, so runc gets the cgroupfs manager. Without
# CAP_SYS_RESOURCE here, runc cannot set the rlimits podman asks for by
# default: ask for ones under this machine's hard limits.
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF
}
