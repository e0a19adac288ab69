#!/usr/bin/env bash
# The image test: the images scripts/images.sh built
# ($REGISTRY/<name>:v<version>) run and do their work.
#  1. each image answers --version (the crate version), timed from
#     `podman run` to exit, and the process alone (chrooted into the image);
#  2. against a lab (`lab up`, API servers on 127.0.0.1, loop devices):
#     the CSI controller image (--network host, as 65532, the socket
#     directory mounted from the host) serves a CreateVolume, whose
#     DataVolume appears in the infra cluster, and a ControllerPublishVolume;
#     the node image (privileged, the lab's device directory mounted) stages
#     that volume: formats the hotplugged loop device ext4 and mounts it;
#     the CCM image gives a guest LoadBalancer Service its infra Service and
#     copies the infra address back.
# Needs root, the images and the lab binary (cargo build --bins). Exits
# non-zero with one message on failure; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

REGISTRY="${REGISTRY:-quay.io/kubevirt-rs}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
TAG="v$VERSION"
target="${CARGO_TARGET_DIR:-target}"
csi="$REGISTRY/kubevirt-csi-driver:$TAG"
ccm="$REGISTRY/kubevirt-cloud-controller-manager:$TAG"
manager="$REGISTRY/kubevirt-hcp-manager:$TAG"

die() { echo "error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "the image test needs root (loop devices, mounts, podman)"
ensure_podman >/dev/null
ensure_python_clients >/dev/null
for image in "$csi" "$ccm" "$manager"; do
    podman image exists "$image" || die "$image is not built; run scripts/images.sh"
done
lab_bin="$target/debug/lab"
[ -x "$lab_bin" ] || die "$lab_bin is not built; run cargo build --bins"

work="$(mktemp -d /tmp/image-test.XXXXXX)"
lab_pid=""
containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do podman rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
    if [ -n "$lab_pid" ]; then
        kill -INT "$lab_pid" 2>/dev/null || true
        wait "$lab_pid" 2>/dev/null || true
    fi
    umount -R "$work/staging" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Fails with the container's log when $1 has stopped.
running() {
    if [ "$(podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" != true ]; then
        podman logs "$1" 2>&1 | tail -n 30 >&2
        die "container $1 stopped"
    fi
}

# Waits up to $1 seconds for command $2... to succeed.
wait_for() {
    local seconds="$1" i
    shift
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

step "each image answers --version (podman run --network none; the process alone, chrooted into the image)"
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
for image in "$csi" "$ccm" "$manager"; do
    start=$(date +%s%N)
    out="$(podman run --rm --network none "$image" --version 2>&1)" || die "$image --version failed: $out"
    run_ms=$(ms_since "$start")
    case "$out" in *"$VERSION"*) ;; *) die "$image --version printed $out, not $VERSION" ;; esac
    entrypoint="$(podman image inspect --format '{{index .Config.Entrypoint 0}}' "$image")"
    root="$(podman image mount "$image")"
    start=$(date +%s%N)
    chroot "$root" "$entrypoint" --version >/dev/null || die "$entrypoint --version failed in $image"
    process_ms=$(ms_since "$start")
    podman image unmount "$image" >/dev/null
    printf '%-62s %-40s podman run %4d ms, process %3d ms\n' "$image" "$out" "$run_ms" "$process_ms"
done

step "starting a lab ($work/lab)"
"$lab_bin" up --dir "$work/lab" --vms 1 >"$work/lab.log" 2>&1 &
lab_pid=$!
wait_for 60 test -e "$work/lab/ready" || { tail -n 20 "$work/lab.log" >&2; die "the lab did not start"; }
. "$work/lab/lab.env"
# The kubeconfigs, readable by the containers' nonroot user.
mkdir -p "$work/conf" "$work/csi"
cp "$INFRA_KUBECONFIG" "$work/conf/infra.kubeconfig"
cp "$GUEST_KUBECONFIG" "$work/conf/guest.kubeconfig"
chmod 755 "$work/conf" && chmod 644 "$work/conf"/*
chmod 777 "$work/csi"
node="${NODES%% *}"
infra=(kubectl --kubeconfig "$INFRA_KUBECONFIG" -n "$INFRA_NAMESPACE")
guest=(kubectl --kubeconfig "$GUEST_KUBECONFIG")

step "CSI controller image: CreateVolume and ControllerPublishVolume through the socket"
containers+=(kvrs-image-test-controller)
podman run -d --name kvrs-image-test-controller --network host --user 65532:65532 \
    -v "$work/conf:/conf:ro" -v "$work/csi:/csi" "$csi" \
    --endpoint=unix:/csi/csi.sock \
    --infra-cluster-kubeconfig=/conf/infra.kubeconfig \
    --infra-cluster-namespace="$INFRA_NAMESPACE" \
    --infra-cluster-labels="$INFRA_CLUSTER_LABELS" \
    --tenant-cluster-kubeconfig=/conf/guest.kubeconfig \
    --run-node-service=false --run-controller-service=true \
    --health-address= --metrics-address= >/dev/null
wait_for 30 test -S "$work/csi/csi.sock" || { running kvrs-image-test-controller; die "no CSI socket"; }
created="$("$CSI_TEST_PYTHON" scripts/csi-call.py "$work/csi/csi.sock" create \
    "pvc-$(cat /proc/sys/kernel/random/uuid)" $((64 * 1024 * 1024)))" ||
    { podman logs kvrs-image-test-controller 2>&1 | tail -n 20 >&2; die "CreateVolume failed"; }
volume="${created%%$'\n'*}"
mapfile -t volume_context < <(tail -n +2 <<<"$created")
"${infra[@]}" get datavolume "$volume" >/dev/null || die "DataVolume $volume is not in the infra cluster"
echo "CreateVolume: DataVolume $INFRA_NAMESPACE/$volume"

step "CSI node image: NodeStageVolume formats and mounts the hotplugged loop device"
devdir="$LAB_DIR/nodes/$node/dev"
mkdir -p "$work/node-csi" "$work/staging"
mount --bind "$work/staging" "$work/staging"
mount --make-rshared "$work/staging"
containers+=(kvrs-image-test-node)
podman run -d --name kvrs-image-test-node --network host --privileged \
    -v "$work/conf:/conf:ro" -v "$work/node-csi:/csi" -v "$devdir:$devdir" \
    -v "$work/staging:$work/staging:rshared" "$csi" \
    --endpoint=unix:/csi/csi.sock --node-name="$node" \
    --tenant-cluster-kubeconfig=/conf/guest.kubeconfig \
    --run-node-service=true --run-controller-service=false \
    --device-dir="$devdir" --health-address= --metrics-address= >/dev/null
wait_for 30 test -S "$work/node-csi/csi.sock" || { running kvrs-image-test-node; die "no node CSI socket"; }
node_id="$("$CSI_TEST_PYTHON" scripts/csi-call.py "$work/node-csi/csi.sock" node-info)" ||
    { podman logs kvrs-image-test-node 2>&1 | tail -n 20 >&2; die "NodeGetInfo failed"; }
published="$("$CSI_TEST_PYTHON" scripts/csi-call.py "$work/csi/csi.sock" publish "$volume" "$node_id")" ||
    { podman logs kvrs-image-test-controller 2>&1 | tail -n 20 >&2; die "ControllerPublishVolume failed"; }
mapfile -t publish_context < <(grep . <<<"$published" || true)
echo "ControllerPublishVolume to $node_id: ${volume_context[*]} ${publish_context[*]}"
"$CSI_TEST_PYTHON" scripts/csi-call.py "$work/node-csi/csi.sock" stage "$volume" \
    "$work/staging/$volume" ext4 "${volume_context[@]}" "${publish_context[@]}" ||
    { podman logs kvrs-image-test-node 2>&1 | tail -n 20 >&2; die "NodeStageVolume failed"; }
source_dev="$(findmnt -n -o SOURCE --mountpoint "$work/staging/$volume")" ||
    die "nothing is mounted at $work/staging/$volume"
fstype="$(findmnt -n -o FSTYPE --mountpoint "$work/staging/$volume")"
[ "$fstype" = ext4 ] || die "$work/staging/$volume is $fstype, not ext4"
echo "NodeStageVolume: $source_dev ($fstype) mounted at $work/staging/$volume"
umount "$work/staging/$volume"

step "CCM image: a guest LoadBalancer Service gets its infra Service and address"
cat >"$work/conf/cloud-config" <<CONF
kubeconfig: /conf/infra.kubeconfig
namespace: $INFRA_NAMESPACE
infraLabels:
$(echo "$INFRA_CLUSTER_LABELS" | tr ',' '\n' | sed 's/^\([^=]*\)=\(.*\)$/  \1: \2/')
loadBalancer:
  enabled: true
instancesV2:
  enabled: true
CONF
chmod 644 "$work/conf/cloud-config"
containers+=(kvrs-image-test-ccm)
podman run -d --name kvrs-image-test-ccm --network host -v "$work/conf:/conf:ro" "$ccm" \
    --cloud-provider=kubevirt --cloud-config=/conf/cloud-config \
    --kubeconfig=/conf/guest.kubeconfig --cluster-name="$CLUSTER_NAME" \
    --secure-port=0 --leader-elect=false >/dev/null
"${guest[@]}" create -f - >/dev/null <<'SVC'
{"apiVersion": "v1", "kind": "Service",
 "metadata": {"name": "image-test", "namespace": "default"},
 "spec": {"type": "LoadBalancer", "selector": {"app": "image-test"},
          "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
SVC
has_infra_service() {
    "${infra[@]}" get services -o name -l "cluster.x-k8s.io/tenant-service-name=image-test" | grep -q .
}
has_ingress() {
    [ -n "$("${guest[@]}" get service image-test -o jsonpath='{.status.loadBalancer.ingress[0].ip}')" ]
}
wait_for 60 has_infra_service || { running kvrs-image-test-ccm; die "no infra Service for guest Service image-test"; }
echo "infra Service: $("${infra[@]}" get services -o name -l cluster.x-k8s.io/tenant-service-name=image-test)"
wait_for 60 has_ingress || { running kvrs-image-test-ccm; die "guest Service image-test got no address"; }
echo "guest Service image-test: $("${guest[@]}" get service image-test -o jsonpath='{.status.loadBalancer.ingress[0].ip}')"
step "image test passed"
