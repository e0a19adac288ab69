#!/usr/bin/env bash
# Builds the suite's container images with podman from the Containerfiles
# next to each crate:
#   kubevirt-csi-driver               (csi-driver/Containerfile; both roles)
#   kubevirt-cloud-controller-manager (cloud-provider/Containerfile)
#   kubevirt-hcp-manager              (manager/Containerfile)
# tagged $REGISTRY/<name>:v<version> (REGISTRY defaults to quay.io/kubevirt-rs),
# and prints each image's size.
#
# The Containerfiles take their bases as build arguments (BUILDER_IMAGE,
# TOOLS_IMAGE, RUNTIME_IMAGE; defaults: official rust, debian and distroless
# images). With IMAGE_BASES=local (the default here: no container registry
# is reachable) this script first makes those bases from Debian packages
# with mmdebstrap and imports them into podman:
#   localhost/kubevirt-rs-base/rust:<rustc version>   bookworm minbase, gcc,
#       libc6-dev, this host's CA bundle and rustup stable toolchain
#   localhost/kubevirt-rs-base/debian:bookworm        bookworm minbase (apt)
#   localhost/kubevirt-rs-base/runtime:bookworm       libc6, libgcc-s1, the CA
#       bundle, /etc/passwd with nonroot (65532), /tmp; no shell, no dpkg
# With IMAGE_BASES=registry the Containerfiles' defaults are used.
#
# podman is configured through $CONTAINERS_CONF (a file under the target
# dir; the system's configuration is not touched): the runc runtime and no
# cgroups, because crun refuses this machine's hybrid cgroup layout.
# Installs podman, runc and mmdebstrap (Debian packages) when root.
# Exits non-zero with one message on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

REGISTRY="${REGISTRY:-quay.io/kubevirt-rs}"
IMAGE_BASES="${IMAGE_BASES:-local}"
# The Debian archive this machine's apt uses (DEBIAN_MIRROR overrides it).
host_mirror() {
    apt-get indextargets --format '$(REPO_URI)' 2>/dev/null |
        grep -v -- '-security' | grep -m 1 '/debian/*$' | sed 's:/*$::'
}

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
TAG="v$VERSION"
state="${CARGO_TARGET_DIR:-target}/images"
mkdir -p "$state"
state="$(cd "$state" && pwd)"

die() { echo "error: $*" >&2; exit 1; }

step "installing podman, runc and mmdebstrap"
ensure_podman
MIRROR="${DEBIAN_MIRROR:-$(host_mirror)}"
[ -n "$MIRROR" ] || die "no Debian archive in apt's sources; set DEBIAN_MIRROR"

step "configuring podman ($CONTAINERS_CONF)"
cat "$CONTAINERS_CONF"

# Makes base image $1 from a tarball that mmdebstrap writes with the rest of
# the arguments, unless the image exists.
make_base() {
    local image="$1" tar="$state/$(echo "$1" | tr '/:' '__').tar"
    shift
    if podman image exists "$image"; then
        echo "$image exists"
        return
    fi
    echo "making $image with mmdebstrap (a minute or two)"
    local log="$state/mmdebstrap.log"
    if ! mmdebstrap --quiet --architectures=amd64 \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$@" bookworm "$tar" "$MIRROR" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "mmdebstrap failed for $image (log: $log)"
    fi
    local changes=()
    case "$image" in
        */rust:*) changes=(--change 'ENV RUSTUP_HOME=/usr/local/rustup'
                           --change 'ENV CARGO_HOME=/usr/local/cargo'
                           --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin') ;;
        *) changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin') ;;
    esac
    podman import --quiet "${changes[@]}" "$tar" "$image" >/dev/null
    rm -f "$tar"
    echo "$image imported"
}

# Makes runtime base $1, the local stand-in of distroless/cc: libc6 and
# libgcc-s1 (their /lib files), the CA bundle that update-ca-certificates
# would write from Debian's ca-certificates, /etc/passwd and /etc/group
# with root and nonroot (65532), /tmp. No shell, no package manager.
make_runtime_base() {
    local image="$1" root="$state/runtime-extract" out="$state/runtime-root"
    if podman image exists "$image"; then
        echo "$image exists"
        return
    fi
    echo "making $image with mmdebstrap (a minute)"
    rm -rf "$root" "$out"
    mkdir -p "$root" "$out"
    # extract: the packages' files, no maintainer scripts, no dpkg.
    if ! mmdebstrap --quiet --variant=extract --include=libc6,libgcc-s1,ca-certificates \
        bookworm "$root" "$MIRROR" >"$state/mmdebstrap.log" 2>&1; then
        tail -n 30 "$state/mmdebstrap.log" >&2
        die "mmdebstrap failed for $image (log: $state/mmdebstrap.log)"
    fi
    mkdir -p "$out/lib/x86_64-linux-gnu" "$out/lib64" "$out/etc/ssl/certs" \
        "$out/tmp" "$out/root" "$out/home/nonroot"
    local lib
    for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1 libdl.so.2 \
        libpthread.so.0 librt.so.1 libresolv.so.2 libnss_files.so.2 libnss_dns.so.2; do
        cp -a "$root/lib/x86_64-linux-gnu/$lib" "$out/lib/x86_64-linux-gnu/" ||
            die "$lib is missing from the extracted libc6"
    done
    cp -a "$root/lib64/ld-linux-x86-64.so.2" "$out/lib64/"
    cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$out/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
    printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
    chmod 1777 "$out/tmp"
    chmod 700 "$out/root"
    chown 65532:65532 "$out/home/nonroot"
    tar -C "$out" --numeric-owner -cf - . |
        podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$image" >/dev/null
    rm -rf "$root" "$out"
    echo "$image imported"
}

build_args=()
if [ "$IMAGE_BASES" = local ]; then
    step "making the base images from Debian packages (mmdebstrap, podman import)"
    toolchain="$(rustc +stable --print sysroot 2>/dev/null || rustc --print sysroot)"
    rust_version="$("$toolchain/bin/rustc" --version | awk '{ print $2 }')"
    builder="localhost/kubevirt-rs-base/rust:$rust_version"
    debian="localhost/kubevirt-rs-base/debian:bookworm"
    runtime="localhost/kubevirt-rs-base/runtime:bookworm"
    # The host's toolchain (no docs) where the official rust image keeps
    # it; cargo, rustc, ... on PATH through /usr/local/cargo/bin. The host's
    # CA bundle, so that cargo reaches crates.io as the host does (through
    # whatever TLS proxy the host trusts); this base is never pushed.
    make_base "$builder" --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
        --customize-hook="mkdir -p \"\$1/usr/local/rustup/toolchain\" \"\$1/usr/local/cargo/bin\" && tar -C '$toolchain' --exclude=./share -cf - . | tar -C \"\$1/usr/local/rustup/toolchain\" -xf - && for b in \"\$1\"/usr/local/rustup/toolchain/bin/*; do ln -s \"/usr/local/rustup/toolchain/bin/\${b##*/}\" \"\$1/usr/local/cargo/bin/\"; done"
    make_base "$debian" --variant=minbase
    make_runtime_base "$runtime"
    build_args=(--build-arg "BUILDER_IMAGE=$builder" --build-arg "TOOLS_IMAGE=$debian"
                --build-arg "RUNTIME_IMAGE=$runtime")
elif [ "$IMAGE_BASES" != registry ]; then
    die "IMAGE_BASES must be local or registry, not $IMAGE_BASES"
fi

# Builds image $2 from Containerfile $1; prints the wall time.
build() {
    local file="$1" image="$2" start log="$state/build-${2##*/}.log"
    start=$(date +%s)
    echo "building $image from $file (log: $log)"
    if ! podman build --network host --layers -f "$file" "${build_args[@]}" \
        -t "$image" . >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "building $image failed (log: $log)"
    fi
    echo "built $image in $(( $(date +%s) - start ))s"
}

step "building the images (the first one runs the release build of the three binaries: about 6 minutes on 2 cores when cold)"
csi="$REGISTRY/kubevirt-csi-driver:$TAG"
ccm="$REGISTRY/kubevirt-cloud-controller-manager:$TAG"
manager="$REGISTRY/kubevirt-hcp-manager:$TAG"
build csi-driver/Containerfile "$csi"
build cloud-provider/Containerfile "$ccm"
build manager/Containerfile "$manager"

step "image sizes"
for image in "$csi" "$ccm" "$manager"; do
    bytes=$(podman image inspect --format '{{.Size}}' "$image")
    printf '%-60s %6.1f MB\n' "$image" "$(echo "$bytes" | awk '{ printf "%.1f", $1 / 1000000 }')"
done
