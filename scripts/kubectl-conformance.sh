#!/usr/bin/env bash
# kubectl conformance check: runs the real `kubectl` (v1.32, from PATH)
# against a cluster and asserts the result of every command, both its exit
# status and the state of the objects it acted on or the output it printed.
#
# usage: scripts/kubectl-conformance.sh KUBECONFIG
#
# It works in a fresh namespace (kc-conformance-<pid>-<random>) that it creates and
# deletes at the end; cluster-scoped objects it creates (ClusterRole,
# ClusterRoleBinding, PriorityClass, CustomResourceDefinition, one extra
# Namespace) are named after that namespace and deleted too, also when the
# script is interrupted. What it checks:
#
#   discovery  the served kinds are in `kubectl api-resources`, /version, /readyz
#   create     namespace, configmap (--from-literal), secret generic (data is
#              base64 of the value), secret stringData through apply, deployment
#              (--image, --replicas; its ReplicaSet and Pending Pods appear),
#              service clusterip/nodeport/externalname, serviceaccount, role,
#              rolebinding, clusterrole, clusterrolebinding, job (and job
#              --from=cronjob), cronjob, quota (the quota controller fills its
#              status), priorityclass, poddisruptionbudget (the disruption
#              controller observes it), ingress, token (a JWT for the
#              ServiceAccount, with the right subject and lifetime)
#   apply      client-side (last-applied annotation, 3-way pruning of a removed
#              key), server-side with two field managers: a conflict, then
#              --force-conflicts moving the field's ownership
#   replace    plain, with a stale resourceVersion (conflict), --force
#   patch      --type=json (and a failing `test` op), merge, strategic (a list
#              merged by key) against merge (the same list replaced)
#   label / annotate   add, overwrite refused without --overwrite, overwrite, remove
#   scale      deployment replicas reach its ReplicaSet and Pods
#              (kube-controller-manager), --current-replicas precondition
#   rollout    history and undo
#   delete     --cascade=background (GC removes the ReplicaSet), foreground
#              (dependents gone before the owner), orphan (ReplicaSet stays,
#              without owner reference)
#   get        -o json, yaml, wide, name, jsonpath, custom-columns, go-template,
#              label and field selectors
#   watch      `kubectl get -w --output-watch-events` sees ADDED, MODIFIED,
#              DELETED caused by this script; -w --request-timeout ends cleanly
#   wait       --for=condition, --for=jsonpath, --for=delete, --for=create, and
#              a timeout on a condition that never holds
#   explain    built-in fields and a CustomResourceDefinition's fields
#   crd        a CRD becomes Established and its custom resources are served
#   auth       can-i (yes for the caller; yes and no for a ServiceAccount via
#              --as), whoami (caller, --as impersonation, a TokenRequest token)
#   diff       exit 0 when the same, 1 with the change shown when different,
#              >1 on error
#   events     `kubectl events --for` shows the Deployment controller's events
#   namespace  deletion completes (the namespace controller finalizes it)
#
# Pods never run in such a lab (there is no kubelet for arbitrary pods and no
# scheduler), so nothing asserts Pod readiness; Deployments, ReplicaSets, Jobs
# and their Pending Pods are asserted. Waits are `kubectl wait` or bounded
# polls (KC_TIMEOUT seconds, default 60) where the API is eventually
# consistent (controllers, garbage collection); there are no fixed sleeps.
#
# Output: one line per check, "ok   <what>" or "FAIL <what>: <why>", then
# "N checks, M failed" (KC_TIMING=1 adds each check's duration). Exit status 0 when all passed, 1 when some failed,
# 2 on a usage or setup error. Needs bash, kubectl, base64, diff, timeout.

set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 KUBECONFIG" >&2
    exit 2
fi
if [[ ! -r $1 ]]; then
    echo "$0: cannot read kubeconfig $1" >&2
    exit 2
fi
for tool in kubectl base64 diff timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "$0: $tool is not on PATH" >&2
        exit 2
    fi
done

KUBECONFIG=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
export KUBECONFIG
# kubectl diff runs this; keep it the plain diff whatever the caller set.
unset KUBECTL_EXTERNAL_DIFF

NS=kc-conformance-$$-$(printf '%04x' "$RANDOM")
TIMEOUT=${KC_TIMEOUT:-60}
IMAGE=registry.k8s.io/pause:3.10
GROUP=$NS.conformance.example.com
WORK=$(mktemp -d)
CHECKS=0
FAILED=0
START=$SECONDS

cleanup() {
    local rc=$?
    # Best effort, and only once this run created its namespace (the names
    # below are this run's); the last check deletes all when all went well.
    if [[ -e $WORK/created ]]; then
        kubectl delete clusterrolebinding "$NS-crb" --ignore-not-found --wait=false >/dev/null 2>&1 || true
        kubectl delete clusterrole "$NS-reader" --ignore-not-found --wait=false >/dev/null 2>&1 || true
        kubectl delete priorityclass "$NS-pc" --ignore-not-found --wait=false >/dev/null 2>&1 || true
        kubectl delete crd "widgets.$GROUP" --ignore-not-found --wait=false >/dev/null 2>&1 || true
        kubectl delete namespace "$NS-extra" "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers ---
# Every check runs in a subshell (errexit does not apply inside it, so each
# step asserts explicitly); `die` ends the check with its reason.

die() {
    printf '%s\n' "$*"
    exit 1
}

# run CMD...: runs CMD, its combined output in OUT; dies with it on failure.
run() {
    OUT=$("$@" 2>&1) || die "\`${*}\` failed: $OUT"
}

# fails CMD...: CMD must fail; its combined output in OUT, its status in RC.
fails() {
    RC=0
    OUT=$("$@" 2>&1) || RC=$?
    ((RC != 0)) || die "\`${*}\` succeeded, expected a failure: $OUT"
}

eq() { # eq ACTUAL EXPECTED WHAT
    [[ $1 == "$2" ]] || die "$3: got '$1', want '$2'"
}

has() { # has TEXT NEEDLE WHAT
    [[ $1 == *"$2"* ]] || die "$3: '$2' not in: $1"
}

kn() { kubectl -n "$NS" "$@"; }

# field OBJ JSONPATH: one field of an object of the test namespace.
field() {
    kn get "$1" -o "jsonpath=$2" 2>&1 || die "get $1 failed: $(kn get "$1" 2>&1)"
}

# poll WHAT CMD...: retries CMD until it succeeds, at most TIMEOUT seconds.
# Only for state that is eventually consistent (controllers, GC, OpenAPI).
poll() {
    local what=$1 deadline=$((SECONDS + TIMEOUT)) last
    shift
    until last=$("$@" 2>&1); do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what (last: $last)"
        sleep 0.2
    done
}

# poll_eq WHAT WANT CMD...: retries until CMD prints WANT, at most TIMEOUT seconds.
poll_eq() {
    local what=$1 want=$2 deadline=$((SECONDS + TIMEOUT)) got
    shift 2
    until got=$("$@" 2>&1) && [[ $got == "$want" ]]; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what: got '$got', want '$want'"
        sleep 0.2
    done
}

# b64 STRING: standard base64 of STRING, one line.
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

# b64url_decode STRING: decodes a base64url segment (JWT part).
b64url_decode() {
    local s
    s=$(printf '%s' "$1" | tr '_-' '/+')
    while ((${#s} % 4)); do s+='='; done
    printf '%s' "$s" | base64 -d
}

one_line() {
    local s
    s=$(printf '%s' "$1" | tr '\n\t' '  ' | tr -s ' ')
    ((${#s} <= 400)) || s="${s:0:400}..."
    printf '%s' "$s"
}

check() { # check WHAT FUNCTION
    local what=$1 out rc=0 t0=$SECONDS
    shift
    out=$("$@" 2>&1) || rc=$?
    CHECKS=$((CHECKS + 1))
    # KC_TIMING=1 appends each check's duration.
    [[ -z ${KC_TIMING:-} ]] || what+=" [$((SECONDS - t0))s]"
    if ((rc == 0)); then
        printf 'ok   %s\n' "$what"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %s: %s\n' "$what" "$(one_line "$out")"
    fi
}

# count KIND ARGS...: how many objects `kubectl get` lists.
count() { kn get "$@" -o name | wc -l | tr -d ' '; }
# rs_exists/rs_gone/pods_gone APP: ReplicaSets/Pods labelled app=APP.
rs_exists() { [[ -n $(kn get rs -l "app=$1" -o name 2>/dev/null) ]]; }
rs_gone() { [[ -z $(kn get rs -l "app=$1" -o name 2>&1) ]]; }
pods_gone() { [[ -z $(kn get pods -l "app=$1" -o name 2>&1) ]]; }

# ------------------------------------------------------------------ checks ---

t_discovery() {
    run kubectl api-resources -o name
    local r
    for r in namespaces configmaps secrets serviceaccounts services pods \
        resourcequotas deployments.apps replicasets.apps jobs.batch cronjobs.batch \
        roles.rbac.authorization.k8s.io rolebindings.rbac.authorization.k8s.io \
        clusterroles.rbac.authorization.k8s.io clusterrolebindings.rbac.authorization.k8s.io \
        priorityclasses.scheduling.k8s.io poddisruptionbudgets.policy \
        ingresses.networking.k8s.io customresourcedefinitions.apiextensions.k8s.io \
        selfsubjectreviews.authentication.k8s.io selfsubjectaccessreviews.authorization.k8s.io \
        events.events.k8s.io; do
        grep -qx "$r" <<<"$OUT" || die "api-resources does not list $r"
    done
    run kubectl version -o json
    has "$OUT" '"serverVersion"' "kubectl version -o json"
    run kubectl get --raw /readyz
    eq "$OUT" ok "/readyz"
}

t_create_namespace() {
    run kubectl create namespace "$NS"
    : >"$WORK/created"
    eq "$OUT" "namespace/$NS created" "create output"
    kubectl wait --for=jsonpath='{.status.phase}'=Active "namespace/$NS" --timeout="${TIMEOUT}s" >/dev/null 2>&1 ||
        die "namespace $NS not Active"
    # The ServiceAccount and root-CA controllers populate every namespace.
    poll "ServiceAccount default in $NS" kn get serviceaccount default
    poll "ConfigMap kube-root-ca.crt in $NS" kn get configmap kube-root-ca.crt
    # A second one, created from a manifest with `create -f`.
    run kubectl create -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS-extra
  labels: {purpose: kc-conformance}
EOF
    eq "$(kubectl get ns -l purpose=kc-conformance -o name)" "namespace/$NS-extra" "namespace by label"
    fails kubectl create namespace "$NS"
    has "$OUT" AlreadyExists "second create of the same namespace"
}

t_create_configmap() {
    run kn create configmap cm1 --from-literal=a=1 --from-literal=greeting='hello world'
    eq "$(field cm/cm1 '{.data.a}')" 1 "data.a"
    eq "$(field cm/cm1 '{.data.greeting}')" 'hello world' "data.greeting"
    printf 'from a file\n' >"$WORK/note.txt"
    run kn create configmap cm2 --from-file="$WORK/note.txt"
    eq "$(field cm/cm2 '{.data.note\.txt}')" 'from a file' "data[note.txt]"
}

t_create_secret() {
    run kn create secret generic s1 --from-literal=password=s3cr3t --from-literal=user=admin
    eq "$(field secret/s1 '{.type}')" Opaque "type"
    eq "$(field secret/s1 '{.data.password}')" "$(b64 s3cr3t)" "data.password (base64 of s3cr3t)"
    eq "$(field secret/s1 '{.data.user}')" "$(b64 admin)" "data.user"
    eq "$(field secret/s1 '{.data.password}' | base64 -d)" s3cr3t "decoded data.password"
}

t_secret_stringdata_apply() {
    local manifest=$WORK/s2.yaml
    cat >"$manifest" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: s2}
type: Opaque
data:
  raw: $(b64 raw-value)
stringData:
  user: alice
EOF
    run kn apply -f "$manifest"
    eq "$OUT" "secret/s2 created" "apply output"
    eq "$(field secret/s2 '{.data.user}')" "$(b64 alice)" "data.user from stringData"
    eq "$(field secret/s2 '{.data.raw}')" "$(b64 raw-value)" "data.raw"
    eq "$(field secret/s2 '{.stringData}')" "" "stringData is write-only, not stored"
    sed -i 's/user: alice/user: bob/' "$manifest"
    run kn apply -f "$manifest"
    eq "$OUT" "secret/s2 configured" "second apply output"
    eq "$(field secret/s2 '{.data.user}')" "$(b64 bob)" "data.user after changing stringData"
    # stringData wins over data for the same key.
    run kn apply --server-side --field-manager=kc-ssa -f - <<EOF
apiVersion: v1
kind: Secret
metadata: {name: s3}
data: {user: $(b64 from-data)}
stringData: {user: from-stringdata}
EOF
    eq "$(field secret/s3 '{.data.user}')" "$(b64 from-stringdata)" "stringData overrides data (server-side apply)"
}

t_create_deployment() {
    run kn create deployment web --image="$IMAGE" --replicas=2 --port=8080
    eq "$(field deploy/web '{.spec.replicas}')" 2 "spec.replicas"
    eq "$(field deploy/web '{.spec.selector.matchLabels.app}')" web "selector"
    eq "$(field deploy/web '{.spec.template.spec.containers[0].image}')" "$IMAGE" "image"
    eq "$(field deploy/web '{.spec.template.spec.containers[0].ports[0].containerPort}')" 8080 "containerPort"
    # kube-controller-manager: a ReplicaSet with 2 replicas and 2 (Pending) Pods.
    run kn wait --for=jsonpath='{.status.replicas}'=2 deploy/web --timeout="${TIMEOUT}s"
    poll "ReplicaSet of web" rs_exists web
    eq "$(kn get rs -l app=web -o 'jsonpath={.items[*].spec.replicas}')" 2 "ReplicaSet spec.replicas"
    eq "$(kn get rs -l app=web -o 'jsonpath={.items[0].metadata.ownerReferences[0].kind}/{.items[0].metadata.ownerReferences[0].name}')" \
        Deployment/web "ReplicaSet owner"
    run kn wait --for=jsonpath='{.status.replicas}'=2 rs -l app=web --timeout="${TIMEOUT}s"
    eq "$(count pods -l app=web)" 2 "Pods of web"
    eq "$(kn get pods -l app=web -o 'jsonpath={.items[*].status.phase}')" "Pending Pending" "Pod phases"
}

t_create_service() {
    run kn create service clusterip svc-c --tcp=80:8080
    eq "$(field svc/svc-c '{.spec.type}')" ClusterIP "type"
    local ip
    ip=$(field svc/svc-c '{.spec.clusterIP}')
    [[ -n $ip && $ip != None ]] || die "clusterIP not allocated: '$ip'"
    eq "$(field svc/svc-c '{.spec.ports[0].port}/{.spec.ports[0].targetPort}')" 80/8080 "port/targetPort"
    eq "$(field svc/svc-c '{.spec.selector.app}')" svc-c "selector"
    run kn create service clusterip svc-h --clusterip=None --tcp=80:80
    eq "$(field svc/svc-h '{.spec.clusterIP}')" None "headless clusterIP"
    run kn create service nodeport svc-n --tcp=80:8080
    eq "$(field svc/svc-n '{.spec.type}')" NodePort "type"
    local np
    np=$(field svc/svc-n '{.spec.ports[0].nodePort}')
    if ! [[ $np =~ ^[0-9]+$ ]] || ((np < 30000 || np > 32767)); then
        die "nodePort '$np' not in 30000-32767"
    fi
    run kn create service externalname svc-x --external-name=example.com
    eq "$(field svc/svc-x '{.spec.type}/{.spec.externalName}')" ExternalName/example.com "externalName"
}

t_create_serviceaccount() {
    run kn create serviceaccount robot
    eq "$OUT" "serviceaccount/robot created" "create output"
    eq "$(field sa/robot '{.metadata.name}')" robot "name"
}

t_create_role() {
    run kn create role pod-reader --verb=get,list,watch --resource=pods,pods/log
    eq "$(field role/pod-reader '{.rules[0].verbs[*]}')" "get list watch" "verbs"
    eq "$(field role/pod-reader '{.rules[0].resources[*]}')" "pods pods/log" "resources"
    eq "$(field role/pod-reader '{.rules[0].apiGroups[*]}')" "" "apiGroups (core)"
}

t_create_rolebinding() {
    run kn create rolebinding robot-reads-pods --role=pod-reader --serviceaccount="$NS:robot" --user=jane
    eq "$(field rolebinding/robot-reads-pods '{.roleRef.kind}/{.roleRef.name}')" Role/pod-reader "roleRef"
    eq "$(field rolebinding/robot-reads-pods '{range .subjects[*]}{.kind}:{.name},{end}')" \
        "User:jane,ServiceAccount:robot," "subjects (kubectl lists users first)"
}

t_create_clusterrole() {
    run kubectl create clusterrole "$NS-reader" --verb=get,list --resource=configmaps,deployments.apps
    eq "$(kubectl get clusterrole "$NS-reader" -o 'jsonpath={range .rules[*]}{.apiGroups[0]}:{.resources[*]};{end}')" \
        ":configmaps;apps:deployments;" "rules"
}

t_create_clusterrolebinding() {
    run kubectl create clusterrolebinding "$NS-crb" --clusterrole="$NS-reader" --serviceaccount="$NS:robot"
    eq "$(kubectl get clusterrolebinding "$NS-crb" -o 'jsonpath={.roleRef.kind}/{.roleRef.name} {.subjects[0].kind}/{.subjects[0].namespace}/{.subjects[0].name}')" \
        "ClusterRole/$NS-reader ServiceAccount/$NS/robot" "roleRef and subject"
}

t_create_job() {
    run kn create job job1 --image="$IMAGE" -- /pause
    eq "$(field job/job1 '{.spec.template.spec.containers[0].command[*]}')" /pause "command"
    # The Job controller creates its Pod (Pending: nothing runs it).
    run kn wait --for=jsonpath='{.status.active}'=1 job/job1 --timeout="${TIMEOUT}s"
    eq "$(kn get pods -l job-name=job1 -o 'jsonpath={.items[0].metadata.ownerReferences[0].kind}')" Job "Pod owner"
}

t_create_cronjob() {
    run kn create cronjob cj1 --image="$IMAGE" --schedule='*/5 * * * *' -- /pause
    eq "$(field cronjob/cj1 '{.spec.schedule}')" '*/5 * * * *' "schedule"
    eq "$(field cronjob/cj1 '{.spec.jobTemplate.spec.template.spec.containers[0].image}')" "$IMAGE" "image"
    run kn create job cj1-manual --from=cronjob/cj1
    eq "$(field job/cj1-manual '{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')" CronJob/cj1 "job --from=cronjob owner"
    eq "$(field job/cj1-manual '{.metadata.annotations.cronjob\.kubernetes\.io/instantiate}')" manual "instantiate annotation"
}

t_create_quota() {
    run kn create quota q1 --hard=pods=100,configmaps=100,services=20
    eq "$(field quota/q1 '{.spec.hard.pods}')" 100 "spec.hard.pods"
    # The resource quota controller computes the status.
    run kn wait --for=jsonpath='{.status.hard.configmaps}'=100 quota/q1 --timeout="${TIMEOUT}s"
    # Three ConfigMaps so far: kube-root-ca.crt, cm1, cm2 (and whatever a
    # platform adds to every namespace, counted here).
    local cms
    cms=$(kn get configmaps -o name | wc -l | tr -d ' ')
    poll_eq "quota status.used.configmaps" "$cms" kn get quota q1 -o 'jsonpath={.status.used.configmaps}'
    # Admission enforces it.
    run kn create quota q-tight --hard=secrets=0
    # Until the controller computed its usage, admission refuses with
    # "status unknown for quota" instead.
    run kn wait --for=jsonpath='{.status.hard.secrets}'=0 quota/q-tight --timeout="${TIMEOUT}s"
    fails kn create secret generic over-quota --from-literal=a=b
    has "$OUT" "exceeded quota" "secret creation over a zero quota"
    run kn delete quota q-tight
}

t_create_priorityclass() {
    run kubectl create priorityclass "$NS-pc" --value=1000 --description="kc conformance" --preemption-policy=Never
    eq "$(kubectl get priorityclass "$NS-pc" -o 'jsonpath={.value}|{.globalDefault}|{.preemptionPolicy}|{.description}')" \
        "1000||Never|kc conformance" "value/globalDefault (unset)/preemptionPolicy/description"
}

t_create_pdb() {
    run kn create poddisruptionbudget pdb1 --selector=app=web --min-available=1
    eq "$(field pdb/pdb1 '{.spec.minAvailable} {.spec.selector.matchLabels.app}')" "1 web" "spec"
    # The disruption controller observes it; no Pod is healthy.
    run kn wait --for=jsonpath='{.status.observedGeneration}'=1 pdb/pdb1 --timeout="${TIMEOUT}s"
    eq "$(field pdb/pdb1 '{.status.desiredHealthy} {.status.currentHealthy} {.status.disruptionsAllowed}')" "1 0 0" "status"
}

t_create_ingress() {
    run kn create ingress ing1 --rule='example.com/api*=svc-c:80' --annotation=kc=conformance
    eq "$(field ing/ing1 '{.spec.rules[0].host}')" example.com "host"
    eq "$(field ing/ing1 '{.spec.rules[0].http.paths[0].path} {.spec.rules[0].http.paths[0].pathType}')" "/api Prefix" "path"
    eq "$(field ing/ing1 '{.spec.rules[0].http.paths[0].backend.service.name}:{.spec.rules[0].http.paths[0].backend.service.port.number}')" \
        svc-c:80 "backend"
    eq "$(field ing/ing1 '{.metadata.annotations.kc}')" conformance "annotation"
}

t_create_token() {
    local token parts payload
    run kn create token robot --duration=10m
    token=$OUT
    IFS=. read -r -a parts <<<"$token"
    eq "${#parts[@]}" 3 "dot-separated JWT parts"
    local p
    for p in "${parts[@]}"; do
        [[ $p =~ ^[A-Za-z0-9_-]+$ ]] || die "JWT part is not base64url: $p"
    done
    payload=$(b64url_decode "${parts[1]}") || die "payload does not decode"
    has "$payload" "\"sub\":\"system:serviceaccount:$NS:robot\"" "JWT subject"
    local iat exp
    iat=$(grep -o '"iat":[0-9]*' <<<"$payload" | cut -d: -f2)
    exp=$(grep -o '"exp":[0-9]*' <<<"$payload" | cut -d: -f2)
    [[ -n $iat && -n $exp ]] || die "no iat/exp in $payload"
    eq "$((exp - iat))" 600 "token lifetime (--duration=10m)"
    has "$(b64url_decode "${parts[0]}")" '"alg":"' "JWT header"
    # The token authenticates as the ServiceAccount.
    run kubectl --token="$token" auth whoami -o 'jsonpath={.status.userInfo.username}'
    eq "$OUT" "system:serviceaccount:$NS:robot" "whoami with the token"
}

t_apply_client_side() {
    local manifest=$WORK/csa.yaml
    cat >"$manifest" <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: csa
  labels: {app: csa}
data: {a: "1", b: "2"}
EOF
    run kn apply -f "$manifest"
    eq "$OUT" "configmap/csa created" "first apply"
    has "$(field cm/csa '{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}')" '"b":"2"' \
        "last-applied-configuration"
    run kn apply -f "$manifest"
    eq "$OUT" "configmap/csa unchanged" "same apply"
    # A key changed by someone else survives; a key removed from the
    # manifest is pruned (three-way merge).
    run kn patch cm csa --type=merge -p '{"data":{"other":"x"}}'
    cat >"$manifest" <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: csa
  labels: {app: csa}
data: {a: "10"}
EOF
    run kn apply -f "$manifest"
    eq "$OUT" "configmap/csa configured" "changed apply"
    eq "$(field cm/csa '{.data.a}|{.data.b}|{.data.other}')" "10||x" "data after apply (a changed, b pruned, other kept)"
    fails kn apply -f - <<<'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}'
    has "$OUT" Invalid "apply of an invalid name"
}

t_apply_server_side() {
    run kn apply --server-side --field-manager=mgr-a -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa}
data: {shared: from-a, onlya: "1"}
EOF
    eq "$OUT" "configmap/ssa serverside-applied" "apply output"
    eq "$(field cm/ssa '{range .metadata.managedFields[*]}{.manager}/{.operation};{end}')" "mgr-a/Apply;" "managedFields"
    local b=$WORK/ssa-b.yaml
    cat >"$b" <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa}
data: {shared: from-b}
EOF
    fails kn apply --server-side --field-manager=mgr-b -f "$b"
    has "$OUT" "conflict" "second manager's apply"
    has "$OUT" "mgr-a" "conflict names the owner"
    has "$OUT" ".data.shared" "conflict names the field"
    eq "$(field cm/ssa '{.data.shared}')" from-a "value after the conflict"
    run kn apply --server-side --field-manager=mgr-b --force-conflicts -f "$b"
    eq "$(field cm/ssa '{.data.shared}|{.data.onlya}')" "from-b|1" "value after --force-conflicts"
    local owners
    owners=$(kn get cm ssa -o json --show-managed-fields | tr -d ' \n')
    # mgr-b now owns data.shared; mgr-a keeps only data.onlya.
    has "$owners" '"manager":"mgr-b","operation":"Apply"' "mgr-b in managedFields"
    [[ $owners =~ \"f:data\":\{\"f:onlya\":\{\}\}\},\"manager\":\"mgr-a\" ]] ||
        die "mgr-a should own only f:data.f:onlya: $owners"
    # mgr-a re-applies without the key it lost: it keeps onlya, shared stays.
    run kn apply --server-side --field-manager=mgr-a -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa}
data: {onlya: "2"}
EOF
    eq "$(field cm/ssa '{.data.shared}|{.data.onlya}')" "from-b|2" "value after mgr-a's re-apply"
}

t_replace() {
    run kn create configmap rep --from-literal=a=1
    local rv uid
    rv=$(field cm/rep '{.metadata.resourceVersion}')
    uid=$(field cm/rep '{.metadata.uid}')
    cat >"$WORK/rep.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: rep, resourceVersion: "$rv"}
data: {b: "2"}
EOF
    run kn replace -f "$WORK/rep.yaml"
    eq "$OUT" "configmap/rep replaced" "replace output"
    eq "$(field cm/rep '{.data.a}|{.data.b}')" "|2" "data replaced wholesale"
    [[ $(field cm/rep '{.metadata.resourceVersion}') != "$rv" ]] || die "resourceVersion did not change"
    fails kn replace -f "$WORK/rep.yaml"
    has "$OUT" "the object has been modified" "replace with a stale resourceVersion"
    cat >"$WORK/rep.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: rep}
data: {c: "3"}
EOF
    run kn replace --force -f "$WORK/rep.yaml"
    eq "$(field cm/rep '{.data.c}')" 3 "data after replace --force"
    [[ $(field cm/rep '{.metadata.uid}') != "$uid" ]] || die "replace --force did not recreate (same uid)"
    fails kn replace -f - <<<'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"absent"}}'
    has "$OUT" NotFound "replace of a missing object"
}

t_patch_json() {
    run kn create configmap pj --from-literal=a=1 --from-literal=b=2
    run kn patch cm pj --type=json -p '[{"op":"add","path":"/data/c","value":"3"},{"op":"remove","path":"/data/a"},{"op":"replace","path":"/data/b","value":"20"}]'
    eq "$OUT" "configmap/pj patched" "patch output"
    eq "$(field cm/pj '{.data.a}|{.data.b}|{.data.c}')" "|20|3" "data"
    fails kn patch cm pj --type=json -p '[{"op":"test","path":"/data/b","value":"nope"},{"op":"remove","path":"/data/b"}]'
    eq "$(field cm/pj '{.data.b}')" 20 "data.b after a failed test op"
}

t_patch_merge() {
    run kn create configmap pm --from-literal=a=1 --from-literal=b=2
    run kn patch cm pm --type=merge -p '{"data":{"a":null,"c":"3"},"metadata":{"labels":{"x":"y"}}}'
    eq "$(field cm/pm '{.data.a}|{.data.b}|{.data.c}|{.metadata.labels.x}')" "|2|3|y" "data and labels"
    run kn patch cm pm --type=merge -p '{"data":{"b":"2"}}'
    eq "$OUT" "configmap/pm patched (no change)" "no-op patch output"
}

t_patch_strategic() {
    # Strategic merge patch merges the containers list by name ...
    run kn create deployment smp --image="$IMAGE" --replicas=0
    run kn patch deploy smp --type=strategic -p '{"spec":{"template":{"spec":{"containers":[{"name":"pause","env":[{"name":"X","value":"1"}]}]}}}}'
    eq "$(field deploy/smp '{.spec.template.spec.containers[*].name}')" pause "containers after strategic patch"
    eq "$(field deploy/smp '{.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}={.spec.template.spec.containers[0].env[0].value}')" \
        "$IMAGE X=1" "container merged by name"
    # ... a sidecar is added beside it (the default --type is strategic) ...
    run kn patch deploy smp -p '{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"'"$IMAGE"'"}]}}}}'
    eq "$(field deploy/smp '{.spec.template.spec.containers[*].name}')" "side pause" "containers after adding a sidecar"
    # ... and removed with the $patch: delete directive ...
    # shellcheck disable=SC2016 # a literal $patch
    run kn patch deploy smp -p '{"spec":{"template":{"spec":{"containers":[{"name":"side","$patch":"delete"}]}}}}'
    eq "$(field deploy/smp '{.spec.template.spec.containers[*].name}')" pause "containers after \$patch: delete"
    # ... whereas a merge patch replaces the whole list.
    run kn patch deploy smp --type=merge -p '{"spec":{"template":{"spec":{"containers":[{"name":"pause","image":"'"$IMAGE"'"}]}}}}'
    eq "$(field deploy/smp '{.spec.template.spec.containers[0].env}')" "" "env after merge patch replaced the list"
    # A patch producing an invalid object is refused.
    fails kn patch deploy smp --type=strategic -p '{"spec":{"replicas":-1}}'
    has "$OUT" "Invalid value" "strategic patch to replicas -1"
    eq "$(field deploy/smp '{.spec.replicas}')" 0 "replicas after the refused patch"
}

t_label() {
    run kn create configmap lab1
    run kn label cm lab1 tier=backend env=test
    eq "$(field cm/lab1 '{.metadata.labels.tier},{.metadata.labels.env}')" backend,test "labels added"
    eq "$(kn get cm -l tier=backend,env=test -o name)" configmap/lab1 "selected by the new labels"
    fails kn label cm lab1 tier=frontend
    has "$OUT" "already has a value" "overwrite without --overwrite"
    eq "$(field cm/lab1 '{.metadata.labels.tier}')" backend "label after the refused overwrite"
    run kn label cm lab1 tier=frontend --overwrite
    eq "$(field cm/lab1 '{.metadata.labels.tier}')" frontend "label overwritten"
    run kn label cm lab1 tier- env-
    eq "$(field cm/lab1 '{.metadata.labels}')" "" "labels removed"
    fails kn label cm lab1 'bad label=x'
}

t_annotate() {
    run kn create configmap ann1
    run kn annotate cm ann1 note='first value' example.com/owner=team-a
    eq "$(field cm/ann1 '{.metadata.annotations.note}|{.metadata.annotations.example\.com/owner}')" "first value|team-a" "annotations added"
    fails kn annotate cm ann1 note=second
    has "$OUT" "already has a value" "overwrite without --overwrite"
    run kn annotate cm ann1 note=second --overwrite
    eq "$(field cm/ann1 '{.metadata.annotations.note}')" second "annotation overwritten"
    run kn annotate cm ann1 note- example.com/owner-
    eq "$(field cm/ann1 '{.metadata.annotations}')" "" "annotations removed"
}

t_scale() {
    run kn create deployment scaler --image="$IMAGE" --replicas=1
    poll "ReplicaSet of scaler" rs_exists scaler
    run kn scale deployment scaler --replicas=3
    eq "$OUT" "deployment.apps/scaler scaled" "scale output"
    eq "$(field deploy/scaler '{.spec.replicas}')" 3 "deployment spec.replicas"
    run kn wait --for=jsonpath='{.spec.replicas}'=3 rs -l app=scaler --timeout="${TIMEOUT}s"
    run kn wait --for=jsonpath='{.status.replicas}'=3 rs -l app=scaler --timeout="${TIMEOUT}s"
    eq "$(count pods -l app=scaler)" 3 "Pods of scaler"
    # The scale subresource reads what scale wrote.
    run kn get deploy scaler --subresource=scale -o 'jsonpath={.kind} {.spec.replicas} {.status.selector}'
    eq "$OUT" "Scale 3 app=scaler" "scale subresource"
    fails kn scale deployment scaler --current-replicas=5 --replicas=1
    has "$OUT" "Expected replicas to be 5" "scale with a wrong --current-replicas"
    eq "$(field deploy/scaler '{.spec.replicas}')" 3 "replicas after the refused scale"
    run kn scale deployment scaler --current-replicas=3 --replicas=0
    run kn wait --for=jsonpath='{.spec.replicas}'=0 rs -l app=scaler --timeout="${TIMEOUT}s"
    poll "Pods of scaler deleted" pods_gone scaler
}

t_rollout() {
    run kn create deployment roll --image="$IMAGE" --replicas=1
    run kn wait --for=jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'=1 deploy/roll --timeout="${TIMEOUT}s"
    run kn set env deploy/roll STAGE=two
    run kn wait --for=jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'=2 deploy/roll --timeout="${TIMEOUT}s"
    run kn rollout history deploy/roll
    has "$OUT" "1 " "history lists revision 1"
    has "$OUT" "2 " "history lists revision 2"
    poll_eq "two ReplicaSets of roll" 2 count rs -l app=roll
    run kn rollout undo deploy/roll --to-revision=1
    eq "$(field deploy/roll '{.spec.template.spec.containers[0].env}')" "" "template after undo"
    run kn wait --for=jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'=3 deploy/roll --timeout="${TIMEOUT}s"
    run kn rollout pause deploy/roll
    eq "$(field deploy/roll '{.spec.paused}')" true "paused"
    run kn rollout resume deploy/roll
    eq "$(field deploy/roll '{.spec.paused}')" "" "resumed"
}

t_delete_background() {
    run kn create deployment del-bg --image="$IMAGE" --replicas=1
    poll "ReplicaSet of del-bg" rs_exists del-bg
    run kn delete deployment del-bg --cascade=background
    eq "$OUT" 'deployment.apps "del-bg" deleted' "delete output"
    fails kn get deployment del-bg
    has "$OUT" NotFound "deployment after delete"
    # The garbage collector deletes the ReplicaSet and its Pods afterwards.
    poll "GC of del-bg's ReplicaSet" rs_gone del-bg
    poll "GC of del-bg's Pods" pods_gone del-bg
}

t_delete_foreground() {
    run kn create deployment del-fg --image="$IMAGE" --replicas=1
    run kn wait --for=jsonpath='{.status.replicas}'=1 deploy/del-fg --timeout="${TIMEOUT}s"
    poll "ReplicaSet of del-fg" rs_exists del-fg
    # kubectl waits until the Deployment is gone, which in foreground
    # deletion happens only once its ReplicaSet (and that one's Pods) are.
    run kn delete deployment del-fg --cascade=foreground --timeout="${TIMEOUT}s"
    fails kn get deployment del-fg
    has "$OUT" NotFound "deployment after delete"
    eq "$(kn get rs -l app=del-fg -o name)" "" "ReplicaSets when the owner is gone"
    eq "$(kn get pods -l app=del-fg -o name)" "" "Pods when the owner is gone"
}

t_delete_orphan() {
    run kn create deployment del-or --image="$IMAGE" --replicas=1
    run kn wait --for=jsonpath='{.status.replicas}'=1 deploy/del-or --timeout="${TIMEOUT}s"
    poll "ReplicaSet of del-or" rs_exists del-or
    local rs
    rs=$(kn get rs -l app=del-or -o name)
    run kn delete deployment del-or --cascade=orphan --timeout="${TIMEOUT}s"
    fails kn get deployment del-or
    has "$OUT" NotFound "deployment after delete"
    # The orphan finalizer ran before the Deployment went: the ReplicaSet
    # stays, without an owner reference, with its Pod.
    eq "$(kn get rs -l app=del-or -o name)" "$rs" "ReplicaSet after orphaning delete"
    eq "$(field "$rs" '{.metadata.ownerReferences}')" "" "ReplicaSet ownerReferences"
    eq "$(count pods -l app=del-or)" 1 "Pods of the orphaned ReplicaSet"
    # A later GC pass must not take it either: delete something else in the
    # background and wait for that to be collected, then look again.
    run kn create deployment del-or2 --image="$IMAGE" --replicas=0
    poll "ReplicaSet of del-or2" rs_exists del-or2
    run kn delete deployment del-or2
    poll "GC of del-or2's ReplicaSet" rs_gone del-or2
    eq "$(kn get rs -l app=del-or -o name)" "$rs" "orphaned ReplicaSet after a later GC"
}

t_get_outputs() {
    run kn create configmap getme --from-literal=a=1 --from-literal=b=two
    run kn label cm getme kind=probe
    # json: well formed (kubectl parses it back), with the data.
    run kn get cm getme -o json
    has "$OUT" '"kind": "ConfigMap"' "-o json kind"
    has "$OUT" '"a": "1"' "-o json data"
    printf '%s' "$OUT" >"$WORK/getme.json"
    run kubectl create --dry-run=client -f "$WORK/getme.json" -o 'jsonpath={.data.b}'
    eq "$OUT" two "-o json parsed back"
    # yaml
    run kn get cm getme -o yaml
    has "$OUT" $'kind: ConfigMap' "-o yaml kind"
    has "$OUT" $'data:\n  a: "1"\n  b: two' "-o yaml data"
    printf '%s\n' "$OUT" >"$WORK/getme.yaml"
    run kubectl create --dry-run=client -f "$WORK/getme.yaml" -o 'jsonpath={.metadata.labels.kind}'
    eq "$OUT" probe "-o yaml parsed back"
    # wide (a Deployment: extra columns)
    run kn get deploy web -o wide
    local header row
    header=$(head -n1 <<<"$OUT")
    row=$(sed -n 2p <<<"$OUT")
    for col in NAME READY UP-TO-DATE AVAILABLE AGE CONTAINERS IMAGES SELECTOR; do
        has "$header" "$col" "-o wide header"
    done
    has "$row" "$IMAGE" "-o wide image column"
    has "$row" "app=web" "-o wide selector column"
    # name
    run kn get cm getme -o name
    eq "$OUT" configmap/getme "-o name"
    run kn get cm -l kind=probe -o name
    eq "$OUT" configmap/getme "-o name with a label selector"
    run kn get cm --field-selector metadata.name=getme -o name
    eq "$OUT" configmap/getme "-o name with a field selector"
    # jsonpath, with a range and a filter
    run kn get cm getme -o 'jsonpath={.metadata.name}:{.data.a}'
    eq "$OUT" getme:1 "-o jsonpath"
    run kn get cm -l kind=probe -o 'jsonpath={range .items[*]}{.metadata.name}={.data.b}{"\n"}{end}'
    eq "$OUT" getme=two "-o jsonpath range"
    run kn get cm -o 'jsonpath={.items[?(@.metadata.name=="getme")].data.a}'
    eq "$OUT" 1 "-o jsonpath filter"
    # custom-columns
    run kn get cm getme -o 'custom-columns=NAME:.metadata.name,A:.data.a,B:.data.b'
    eq "$(tr -s ' ' <<<"$OUT")" $'NAME A B\ngetme 1 two' "-o custom-columns"
    run kn get cm getme --no-headers -o 'custom-columns=NAME:.metadata.name'
    eq "$OUT" getme "-o custom-columns --no-headers"
    # go-template
    # shellcheck disable=SC2016 # template variables
    run kn get cm getme -o 'go-template={{.metadata.name}} {{index .data "a"}} {{range $k, $v := .data}}{{$k}};{{end}}'
    eq "$OUT" "getme 1 a;b;" "-o go-template"
    # default table, --show-labels
    run kn get cm getme --show-labels
    has "$(sed -n 2p <<<"$OUT")" "kind=probe" "--show-labels"
    has "$(head -n1 <<<"$OUT")" DATA "table header"
    fails kn get cm does-not-exist
    has "$OUT" 'configmaps "does-not-exist" not found' "get of a missing object"
}

t_watch() {
    run kn create configmap watched --from-literal=v=0
    local out=$WORK/watch.out pid
    timeout "$TIMEOUT" kubectl -n "$NS" get cm watched -w --output-watch-events \
        -o 'jsonpath={.type} {.object.data.v}{"\n"}' >"$out" 2>&1 &
    pid=$!
    # The watch first lists: its ADDED line means it has its resourceVersion,
    # and every later change is delivered.
    poll "the watch's initial ADDED event" grep -qx 'ADDED 0' "$out"
    run kn patch cm watched --type=merge -p '{"data":{"v":"1"}}'
    poll "the watch's MODIFIED event" grep -qx 'MODIFIED 1' "$out"
    run kn delete cm watched
    poll "the watch's DELETED event" grep -qx 'DELETED 1' "$out"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    eq "$(tr '\n' ',' <"$out")" "ADDED 0,MODIFIED 1,DELETED 1," "watch events"
    # The plain form, ended by --request-timeout: exits 0 after the table.
    local rc=0
    OUT=$(timeout 30 kubectl -n "$NS" get cm -w --request-timeout=2s 2>&1) || rc=$?
    eq "$rc" 0 "exit status of get -w --request-timeout=2s"
    has "$OUT" kube-root-ca.crt "get -w listing"
}

t_wait() {
    # condition (the Deployment controller sets Progressing; Available stays
    # False because no Pod becomes ready)
    run kn wait --for=condition=Progressing deploy/web --timeout="${TIMEOUT}s"
    eq "$OUT" "deployment.apps/web condition met" "wait output"
    run kn wait --for=condition=Available=false deploy/web --timeout="${TIMEOUT}s"
    fails kn wait --for=condition=Available deploy/web --timeout=2s
    has "$OUT" "timed out" "wait for a condition that never holds"
    # jsonpath
    run kn wait --for=jsonpath='{.spec.replicas}'=2 deploy/web --timeout="${TIMEOUT}s"
    run kn wait --for=jsonpath='{.status.phase}'=Pending pod -l app=web --timeout="${TIMEOUT}s"
    # delete
    run kn create configmap doomed
    run kn delete configmap doomed --wait=false
    run kn wait --for=delete configmap/doomed --timeout="${TIMEOUT}s"
    fails kn get configmap doomed
    # create: wait started before the object exists
    local pid rc=0
    kn wait --for=create configmap/latecomer --timeout="${TIMEOUT}s" >"$WORK/wait-create.out" 2>&1 &
    pid=$!
    run kn create configmap latecomer
    wait "$pid" || rc=$?
    eq "$rc" 0 "exit status of wait --for=create ($(cat "$WORK/wait-create.out"))"
}

t_explain() {
    run kubectl explain deployment.spec.replicas
    has "$OUT" "KIND:       Deployment" "explain KIND"
    has "$OUT" "GROUP:      apps" "explain GROUP"
    has "$OUT" "VERSION:    v1" "explain VERSION"
    has "$OUT" "FIELD: replicas <integer>" "explain FIELD"
    has "$OUT" "Number of desired pods" "explain description"
    run kubectl explain cronjob.spec.schedule --api-version=batch/v1
    has "$OUT" "FIELD: schedule <string>" "explain cronjob schedule"
    run kubectl explain pod.spec.containers --recursive
    has "$OUT" "livenessProbe" "explain --recursive"
    fails kubectl explain deployment.spec.nosuchfield
}

t_crd() {
    run kubectl apply -f - <<EOF
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.$GROUP}
spec:
  group: $GROUP
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size:
                type: integer
                minimum: 1
                description: How big the widget is.
EOF
    run kubectl wait --for=condition=Established "crd/widgets.$GROUP" --timeout="${TIMEOUT}s"
    poll "widgets in discovery" kn get "widgets.$GROUP"
    run kn apply -f - <<EOF
apiVersion: $GROUP/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
EOF
    eq "$(kn get "widgets.$GROUP" w1 -o 'jsonpath={.spec.size}')" 3 "custom resource field"
    fails kn apply -f - <<EOF
apiVersion: $GROUP/v1
kind: Widget
metadata: {name: w2}
spec: {size: 0}
EOF
    has "$OUT" "should be greater than or equal to 1" "schema validation"
    run kn patch "widgets.$GROUP" w1 --type=merge -p '{"spec":{"size":5}}'
    eq "$(kn get "widgets.$GROUP" w1 -o 'jsonpath={.spec.size}')" 5 "after merge patch"
    # The CRD's schema reaches OpenAPI v3, which explain reads.
    poll "explain of the CRD's field" kubectl explain "widgets.$GROUP.spec.size"
    run kubectl explain "widgets.$GROUP.spec.size"
    has "$OUT" "How big the widget is." "explain of a custom resource field"
}

t_auth_can_i() {
    run kn auth can-i create deployments.apps
    eq "$OUT" yes "can-i create deployments (caller)"
    run kubectl auth can-i '*' '*' --all-namespaces
    eq "$OUT" yes "can-i do anything anywhere (caller)"
    local sa=system:serviceaccount:$NS:robot
    run kn auth can-i get pods --as="$sa"
    eq "$OUT" yes "can-i get pods as the ServiceAccount (Role)"
    run kubectl auth can-i list configmaps --all-namespaces --as="$sa"
    eq "$OUT" yes "can-i list configmaps cluster-wide as the ServiceAccount (ClusterRole)"
    fails kn auth can-i delete secrets --as="$sa"
    eq "$RC/$OUT" 1/no "can-i delete secrets as the ServiceAccount"
    fails kn auth can-i create pods --as="$sa"
    eq "$OUT" no "can-i create pods as the ServiceAccount"
    run kn auth can-i --list --as="$sa"
    has "$OUT" "pods/log" "can-i --list as the ServiceAccount"
    # The ServiceAccount is really denied.
    fails kn delete configmap cm1 --as="$sa"
    has "$OUT" Forbidden "delete as the ServiceAccount"
}

t_auth_whoami() {
    run kubectl auth whoami -o 'jsonpath={.status.userInfo.username}|{.status.userInfo.groups}'
    [[ $OUT == [a-z]*'|'* ]] || die "no username in whoami: $OUT"
    has "$OUT" system:authenticated "caller's groups"
    local sa=system:serviceaccount:$NS:robot
    run kubectl auth whoami --as="$sa" -o 'jsonpath={.status.userInfo.username}|{.status.userInfo.groups}'
    eq "${OUT%%|*}" "$sa" "whoami --as"
    has "$OUT" "system:serviceaccounts:$NS" "whoami --as groups"
    run kubectl auth whoami
    has "$OUT" Username "table output"
}

t_diff() {
    run kn apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: diffme}
data: {k: v1}
EOF
    cat >"$WORK/diffme.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: diffme}
data: {k: v1}
EOF
    run kn diff -f "$WORK/diffme.yaml"
    eq "$OUT" "" "diff output when the same"
    sed -i 's/k: v1/k: v2/' "$WORK/diffme.yaml"
    fails kn diff -f "$WORK/diffme.yaml"
    eq "$RC" 1 "diff exit status when different"
    has "$OUT" "-  k: v1" "diff shows the old value"
    has "$OUT" "+  k: v2" "diff shows the new value"
    eq "$(field cm/diffme '{.data.k}')" v1 "object after diff (server-side dry run only)"
    run kn diff --server-side --field-manager=kc-diff -f - <<<'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"diffme"},"data":{"k":"v1"}}'
    fails kn diff -f - <<<'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"brand-new"},"data":{"k":"v"}}'
    eq "$RC" 1 "diff exit status for a new object"
    has "$OUT" "+  name: brand-new" "diff of a new object"
    fails kn diff -f - <<<'{"apiVersion":"v1","kind":"NoSuchKind","metadata":{"name":"x"}}'
    ((RC > 1)) || die "diff exit status on an error: $RC, want >1"
}

events_of_scaler_have() { kn events --for deployment/scaler | grep -q "$1"; }

t_events() {
    # Events are recorded asynchronously by the controller.
    poll "ScalingReplicaSet event of scaler" events_of_scaler_have ScalingReplicaSet
    run kn events --for deployment/scaler -o 'jsonpath={.items[*].reason}'
    has "$OUT" ScalingReplicaSet "event reasons"
}

t_delete_namespace() {
    run kubectl delete namespace "$NS-extra" --timeout="${TIMEOUT}s"
    run kubectl delete namespace "$NS" --timeout="$((TIMEOUT * 2))s"
    eq "$OUT" "namespace \"$NS\" deleted" "delete output"
    fails kubectl get namespace "$NS"
    has "$OUT" NotFound "namespace after delete"
    run kubectl delete clusterrolebinding "$NS-crb"
    run kubectl delete clusterrole "$NS-reader"
    run kubectl delete priorityclass "$NS-pc"
    run kubectl delete crd "widgets.$GROUP" --timeout="${TIMEOUT}s"
    fails kubectl get clusterrole "$NS-reader"
}

# -------------------------------------------------------------------- main ---

echo "kubectl conformance against $(kubectl config view --minify -o 'jsonpath={.clusters[0].cluster.server}') in namespace $NS"
kubectl version 2>&1 | sed -n 's/^\(Client\|Server\) Version: /kubectl \1 version: /p' || true

check "discovery: api-resources, version, readyz" t_discovery
check "create namespace" t_create_namespace
if ((FAILED)); then
    echo "cannot continue without the namespace"
    echo "$CHECKS checks, $FAILED failed"
    exit 1
fi
check "create configmap --from-literal/--from-file" t_create_configmap
check "create secret generic (data is base64)" t_create_secret
check "secret stringData through apply" t_secret_stringdata_apply
check "create quota (controller status, admission)" t_create_quota
check "create deployment --image --replicas (ReplicaSet, Pods)" t_create_deployment
check "create service clusterip/nodeport/externalname" t_create_service
check "create serviceaccount" t_create_serviceaccount
check "create role" t_create_role
check "create rolebinding" t_create_rolebinding
check "create clusterrole" t_create_clusterrole
check "create clusterrolebinding" t_create_clusterrolebinding
check "create job (controller creates its Pod)" t_create_job
check "create cronjob, job --from=cronjob" t_create_cronjob
check "create priorityclass" t_create_priorityclass
check "create poddisruptionbudget (controller status)" t_create_pdb
check "create ingress" t_create_ingress
check "create token (JWT, subject, lifetime, authenticates)" t_create_token
check "apply client-side (3-way merge)" t_apply_client_side
check "apply server-side (conflict, --force-conflicts)" t_apply_server_side
check "replace (plain, stale resourceVersion, --force)" t_replace
check "patch --type=json" t_patch_json
check "patch --type=merge" t_patch_merge
check "patch --type=strategic (list merged by key)" t_patch_strategic
check "label (add, overwrite, remove)" t_label
check "annotate (add, overwrite, remove)" t_annotate
check "scale deployment (ReplicaSet, Pods follow)" t_scale
check "rollout history/undo/pause/resume" t_rollout
check "delete --cascade=background" t_delete_background
check "delete --cascade=foreground" t_delete_foreground
check "delete --cascade=orphan" t_delete_orphan
check "get -o json/yaml/wide/name/jsonpath/custom-columns/go-template" t_get_outputs
check "get -w (watch events)" t_watch
check "wait --for=condition/jsonpath/delete/create" t_wait
check "explain" t_explain
check "customresourcedefinition (Established, served, validated, explained)" t_crd
check "auth can-i (caller, --as ServiceAccount)" t_auth_can_i
check "auth whoami (caller, --as)" t_auth_whoami
check "diff (exit 0 same, 1 different, >1 error)" t_diff
check "events --for" t_events
check "delete namespace (finalized)" t_delete_namespace

echo "$CHECKS checks, $FAILED failed ($((SECONDS - START))s)"
((FAILED == 0)) || exit 1
