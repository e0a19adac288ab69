#!/usr/bin/env python3
"""Checks a cluster with the official Kubernetes Python client.

usage: scripts/python-client-check.py KUBECONFIG

Uses the PyPI `kubernetes` package (pip install kubernetes) the way
applications do, against the cluster of KUBECONFIG, and asserts every result.
It works in a fresh namespace (py-client-check-<pid>-<random>) that it deletes at the
end, as well as the one CustomResourceDefinition it creates. Steps:

  - load the kubeconfig; the server's version
  - create the namespace; its `default` ServiceAccount appears
  - ConfigMap: create, read, list, patch (merge, strategic, JSON patch and a
    failing JSON-patch `test`), replace (and a 409 for a stale
    resourceVersion), delete
  - Secret: the same; string_data is returned as base64 data and not stored
  - Deployment (apps/v1): the same; kube-controller-manager creates its
    ReplicaSet and (Pending) Pods; a strategic patch merges the containers
    list by name, a merge patch replaces it; foreground delete removes the
    ReplicaSet first
  - list with a label selector and with pagination (limit/continue,
    remainingItemCount, a bad continue token refused)
  - a watch (kubernetes.watch.Watch) from a list's resourceVersion sees the
    ADDED, MODIFIED and DELETED events of a ConfigMap the script changes
  - server-side apply through the dynamic client (DynamicClient) with
    field_manager: a second manager's conflict (409), force_conflicts, the
    managed fields
  - CustomResourceDefinitions (apiextensions.k8s.io/v1): create one, wait for
    Established, find it in the list, serve a custom object (CustomObjectsApi)
  - TokenRequest for a ServiceAccount: a JWT with the right subject and
    lifetime, accepted by TokenReview and usable as a client's credential
  - SelfSubjectAccessReview: allowed for the caller, denied for the
    ServiceAccount's token; SelfSubjectReview (whoami)
  - 404: ApiException with status 404 and a NotFound Status body, from the
    typed and the dynamic client
  - delete the namespace; it is finalized

Pods never run in the lab (no kubelet for arbitrary pods, no scheduler), so
Pods are asserted to exist and be Pending, never Ready. Eventually consistent
state (controllers, garbage collection) is awaited with bounded polls
(PY_CHECK_TIMEOUT seconds, default 60); nothing relies on fixed sleeps.

Prints "ok <what>" per step; on the first failure prints
"FAIL <what>: <why>" and exits 1 (after deleting what it created). Exit 2 on
a usage error or when the `kubernetes` package is missing.
"""

import base64
import json
import os
import secrets
import sys
import threading
import time

try:
    from kubernetes import client, config, dynamic, watch
    from kubernetes.client.rest import ApiException
    from kubernetes.dynamic import exceptions as dynamic_exceptions
except ImportError:
    print("python-client-check: the `kubernetes` package is missing (pip install kubernetes)",
          file=sys.stderr)
    sys.exit(2)

TIMEOUT = float(os.environ.get("PY_CHECK_TIMEOUT", "60"))
IMAGE = "registry.k8s.io/pause:3.10"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class CheckFailed(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise CheckFailed(message)


def expect_eq(actual, wanted, what):
    if actual != wanted:
        raise CheckFailed(f"{what}: got {actual!r}, want {wanted!r}")


def b64(s):
    return base64.b64encode(s.encode()).decode()


def b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def until(what, fn, timeout=None):
    """Polls fn until it returns a truthy value; for eventually consistent
    state only (controllers, garbage collection)."""
    deadline = time.monotonic() + (timeout or TIMEOUT)
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except ApiException as e:
            last = f"{e.status} {e.reason}"
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout or TIMEOUT:.0f}s waiting for {what} "
                              f"(last: {last!r})")
        time.sleep(0.2)


def expect_api_error(status, fn, what):
    """fn must raise an ApiException with HTTP status `status`."""
    try:
        fn()
    except ApiException as e:
        expect_eq(e.status, status, f"{what}: HTTP status")
        return e
    raise CheckFailed(f"{what}: succeeded, expected HTTP {status}")


def status_body(e):
    try:
        return json.loads(e.body)
    except (TypeError, ValueError):
        raise CheckFailed(f"error body is not a JSON Status: {e.body!r}")


def is_not_found(fn):
    try:
        fn()
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


class Checker:
    def __init__(self, kubeconfig):
        self.kubeconfig = kubeconfig
        self.ns = f"py-client-check-{os.getpid()}-{secrets.token_hex(2)}"
        self.group = f"{self.ns}.example.com"
        self.crd_name = f"gadgets.{self.group}"
        self.api = None
        self.namespace_created = False
        self.crd_created = False
        self.steps = 0

    # ---------------------------------------------------------------- steps
    def load(self):
        self.api = config.new_client_from_config(config_file=self.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.version = client.VersionApi(self.api).get_code()
        expect(self.version.git_version.startswith("v1."), f"server version {self.version.git_version}")
        return f"load kubeconfig (server {self.version.git_version}, {self.api.configuration.host})"

    def create_namespace(self):
        ns = self.core.create_namespace(client.V1Namespace(
            metadata=client.V1ObjectMeta(name=self.ns, labels={"purpose": "py-client-check"})))
        self.namespace_created = True
        expect_eq(ns.metadata.name, self.ns, "name")
        expect_eq(ns.status.phase, "Active", "phase")
        # kube-controller-manager's ServiceAccount controller.
        until("the default ServiceAccount",
              lambda: self.core.read_namespaced_service_account("default", self.ns))
        return f"create namespace {self.ns}"

    def configmap(self):
        ns, core = self.ns, self.core
        cm = core.create_namespaced_config_map(ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="cm1", labels={"app": "py"}), data={"a": "1", "b": "2"}))
        expect(cm.metadata.uid, "no uid on the created ConfigMap")
        expect_eq(cm.data, {"a": "1", "b": "2"}, "created data")
        got = core.read_namespaced_config_map("cm1", ns)
        expect_eq((got.metadata.uid, got.data), (cm.metadata.uid, cm.data), "read")
        names = [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
        expect("cm1" in names and "kube-root-ca.crt" in names, f"list: {names}")
        # merge patch: null deletes a key
        p = core.patch_namespaced_config_map("cm1", ns, {"data": {"a": None, "c": "3"}},
                                             _content_type=MERGE)
        expect_eq(p.data, {"b": "2", "c": "3"}, "data after merge patch")
        # strategic merge patch
        p = core.patch_namespaced_config_map(
            "cm1", ns, {"metadata": {"labels": {"tier": "x"}}, "data": {"d": "4"}}, _content_type=STRATEGIC)
        expect_eq(p.data, {"b": "2", "c": "3", "d": "4"}, "data after strategic patch")
        expect_eq(p.metadata.labels, {"app": "py", "tier": "x"}, "labels after strategic patch")
        # JSON patch
        p = core.patch_namespaced_config_map("cm1", ns, [
            {"op": "test", "path": "/data/b", "value": "2"},
            {"op": "replace", "path": "/data/b", "value": "20"},
            {"op": "remove", "path": "/data/c"},
            {"op": "add", "path": "/data/e", "value": "5"},
        ], _content_type=JSON_PATCH)
        expect_eq(p.data, {"b": "20", "d": "4", "e": "5"}, "data after JSON patch")
        e = expect_api_error(422, lambda: core.patch_namespaced_config_map(
            "cm1", ns, [{"op": "test", "path": "/data/b", "value": "nope"}], _content_type=JSON_PATCH),
            "JSON patch with a failing test op")
        expect_eq(core.read_namespaced_config_map("cm1", ns).data["b"], "20",
                  f"data.b after the failed patch ({e.reason})")
        # replace
        cur = core.read_namespaced_config_map("cm1", ns)
        stale_rv = cur.metadata.resource_version
        cur.data = {"only": "this"}
        r = core.replace_namespaced_config_map("cm1", ns, cur)
        expect_eq(r.data, {"only": "this"}, "data after replace")
        expect(r.metadata.resource_version != stale_rv, "resourceVersion unchanged by replace")
        cur.metadata.resource_version = stale_rv
        cur.data = {"stale": "write"}
        e = expect_api_error(409, lambda: core.replace_namespaced_config_map("cm1", ns, cur),
                             "replace with a stale resourceVersion")
        expect_eq(status_body(e).get("reason"), "Conflict", "Status reason of the stale replace")
        # delete
        st = core.delete_namespaced_config_map("cm1", ns)
        expect_eq(getattr(st, "status", "Success") or "Success", "Success", "delete status")
        expect(is_not_found(lambda: core.read_namespaced_config_map("cm1", ns)),
               "ConfigMap still readable after delete")
        return "ConfigMap create/read/list/patch (merge, strategic, json)/replace/delete"

    def secret(self):
        ns, core = self.ns, self.core
        s = core.create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name="s1"), type="Opaque",
            string_data={"password": "s3cr3t"}, data={"raw": b64("raw-value")}))
        expect_eq(s.data, {"password": b64("s3cr3t"), "raw": b64("raw-value")},
                  "data of the created Secret (string_data becomes base64 data)")
        got = core.read_namespaced_secret("s1", ns)
        expect_eq(got.data.get("password"), b64("s3cr3t"), "read data.password")
        expect_eq(base64.b64decode(got.data["password"]).decode(), "s3cr3t", "decoded data.password")
        expect_eq(got.string_data, None, "string_data is write-only")
        expect_eq(got.type, "Opaque", "type")
        listed = core.list_namespaced_secret(ns, field_selector="metadata.name=s1").items
        expect_eq([x.metadata.name for x in listed], ["s1"], "list by field selector")
        # merge patch through stringData
        p = core.patch_namespaced_secret("s1", ns, {"stringData": {"user": "bob"}}, _content_type=MERGE)
        expect_eq(p.data.get("user"), b64("bob"), "data.user after merge patch of stringData")
        p = core.patch_namespaced_secret("s1", ns, {"data": {"extra": b64("x")}}, _content_type=STRATEGIC)
        expect_eq(sorted(p.data), ["extra", "password", "raw", "user"], "keys after strategic patch")
        p = core.patch_namespaced_secret("s1", ns, [{"op": "remove", "path": "/data/extra"}],
                                         _content_type=JSON_PATCH)
        expect_eq(sorted(p.data), ["password", "raw", "user"], "keys after JSON patch")
        cur = core.read_namespaced_secret("s1", ns)
        cur.data = {"only": b64("value")}
        r = core.replace_namespaced_secret("s1", ns, cur)
        expect_eq(r.data, {"only": b64("value")}, "data after replace")
        e = expect_api_error(422, lambda: core.patch_namespaced_secret(
            "s1", ns, {"type": "kubernetes.io/tls"}, _content_type=MERGE), "changing an immutable Secret type")
        expect("immutable" in str(e.body), f"422 body does not say immutable: {e.body}")
        core.delete_namespaced_secret("s1", ns)
        expect(is_not_found(lambda: core.read_namespaced_secret("s1", ns)), "Secret readable after delete")
        return "Secret create/read/list/patch (merge, strategic, json)/replace/delete, string_data -> base64 data"

    def deployment(self):
        ns, apps, core = self.ns, self.apps, self.core
        labels = {"app": "py-web"}
        d = apps.create_namespaced_deployment(ns, client.V1Deployment(
            metadata=client.V1ObjectMeta(name="py-web", labels=labels),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="pause", image=IMAGE)])))))
        expect_eq(d.spec.replicas, 2, "spec.replicas")
        # Defaults filled in by the API server.
        expect_eq(d.spec.strategy.type, "RollingUpdate", "defaulted strategy")
        expect_eq(d.spec.template.spec.containers[0].image_pull_policy, "IfNotPresent", "defaulted pull policy")
        # kube-controller-manager: a ReplicaSet with 2 replicas and 2 Pending Pods.
        until("the Deployment's status.replicas == 2",
              lambda: apps.read_namespaced_deployment_status("py-web", ns).status.replicas == 2)
        rs = apps.list_namespaced_replica_set(ns, label_selector="app=py-web").items
        expect_eq(len(rs), 1, "ReplicaSets")
        expect_eq((rs[0].spec.replicas, rs[0].metadata.owner_references[0].kind,
                   rs[0].metadata.owner_references[0].name), (2, "Deployment", "py-web"), "ReplicaSet")
        pods = until("2 Pods", lambda: [p for p in core.list_namespaced_pod(
            ns, label_selector="app=py-web").items] or None)
        expect_eq([p.status.phase for p in pods], ["Pending", "Pending"], "Pods")
        got = apps.read_namespaced_deployment("py-web", ns)
        expect_eq(got.metadata.uid, d.metadata.uid, "read")
        listed = apps.list_namespaced_deployment(ns, label_selector="app=py-web").items
        expect_eq([x.metadata.name for x in listed], ["py-web"], "list by label")
        # strategic merge patch merges containers by name
        p = apps.patch_namespaced_deployment("py-web", ns, {"spec": {"template": {"spec": {"containers": [
            {"name": "pause", "env": [{"name": "STAGE", "value": "two"}]}]}}}}, _content_type=STRATEGIC)
        c = p.spec.template.spec.containers
        expect_eq([(x.name, x.image, [(v.name, v.value) for v in x.env or []]) for x in c],
                  [("pause", IMAGE, [("STAGE", "two")])], "containers after strategic patch")
        # merge patch replaces the list
        p = apps.patch_namespaced_deployment("py-web", ns, {"spec": {"template": {"spec": {"containers": [
            {"name": "pause", "image": IMAGE}]}}}, "metadata": {"labels": {"patched": "merge"}}},
            _content_type=MERGE)
        expect_eq(p.spec.template.spec.containers[0].env, None, "env after merge patch replaced the list")
        expect_eq(p.metadata.labels.get("patched"), "merge", "label after merge patch")
        # JSON patch
        p = apps.patch_namespaced_deployment("py-web", ns, [
            {"op": "replace", "path": "/spec/replicas", "value": 3}], _content_type=JSON_PATCH)
        expect_eq(p.spec.replicas, 3, "replicas after JSON patch")
        # scale subresource agrees
        sc = apps.read_namespaced_deployment_scale("py-web", ns)
        expect_eq(sc.spec.replicas, 3, "scale subresource")
        # replace: read, modify, write, again on a conflict (client-go's
        # RetryOnConflict), since kube-controller-manager keeps writing the
        # status of a Deployment it is scaling
        for attempt in range(5):
            cur = apps.read_namespaced_deployment("py-web", ns)
            cur.metadata.annotations = dict(cur.metadata.annotations or {}, note="replaced")
            cur.spec.replicas = 1
            try:
                r = apps.replace_namespaced_deployment("py-web", ns, cur)
                break
            except ApiException as e:
                if e.status != 409 or attempt == 4:
                    raise
        expect_eq((r.metadata.annotations.get("note"), r.spec.replicas), ("replaced", 1), "after replace")
        e = expect_api_error(422, lambda: apps.patch_namespaced_deployment(
            "py-web", ns, {"spec": {"replicas": -1}}, _content_type=MERGE), "invalid replicas")
        expect_eq(status_body(e).get("reason"), "Invalid", "Status reason of the invalid patch")
        # delete in the foreground: the ReplicaSet goes first, the Deployment last
        apps.delete_namespaced_deployment("py-web", ns, body=client.V1DeleteOptions(
            propagation_policy="Foreground"))
        until("the Deployment to be gone",
              lambda: is_not_found(lambda: apps.read_namespaced_deployment("py-web", ns)))
        expect_eq(apps.list_namespaced_replica_set(ns, label_selector="app=py-web").items, [],
                  "ReplicaSets once the Deployment is gone (foreground)")
        expect_eq(core.list_namespaced_pod(ns, label_selector="app=py-web").items, [],
                  "Pods once the Deployment is gone (foreground)")
        return "Deployment (apps/v1) create/read/list/patch (strategic, merge, json)/replace/delete, ReplicaSet and Pods"

    def list_pagination(self):
        ns, core = self.ns, self.core
        for i in range(7):
            core.create_namespaced_config_map(ns, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"page-{i}", labels={"set": "pages", "index": str(i)})))
        core.create_namespaced_config_map(ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="not-a-page", labels={"set": "other"})))
        sel = core.list_namespaced_config_map(ns, label_selector="set=pages,index in (1,3,5)")
        expect_eq([c.metadata.name for c in sel.items], ["page-1", "page-3", "page-5"], "label selector")
        neg = core.list_namespaced_config_map(ns, label_selector="set,set!=pages")
        expect_eq([c.metadata.name for c in neg.items], ["not-a-page"], "exists and != selector")
        # pages of 3 with continue
        names, pages, token = [], [], None
        while True:
            page = core.list_namespaced_config_map(ns, label_selector="set=pages", limit=3, _continue=token)
            pages.append(len(page.items))
            names += [c.metadata.name for c in page.items]
            token = page.metadata._continue
            if not token:
                break
            expect(len(pages) < 10, "pagination does not end")
        expect_eq(pages, [3, 3, 1], "page sizes")
        expect_eq(names, [f"page-{i}" for i in range(7)], "paginated names")
        # remainingItemCount is given without a selector
        total = len(core.list_namespaced_config_map(ns).items)
        first = core.list_namespaced_config_map(ns, limit=2)
        expect_eq(len(first.items), 2, "first page without selector")
        expect_eq(first.metadata.remaining_item_count, total - 2, "remainingItemCount")
        expect_api_error(400, lambda: core.list_namespaced_config_map(
            ns, limit=2, _continue="not-a-continue-token"), "a garbage continue token")
        return "list with label selector and pagination (limit/continue)"

    def watch_configmap(self):
        ns, core = self.ns, self.core
        listed = core.list_namespaced_config_map(ns, field_selector="metadata.name=watched")
        expect_eq(listed.items, [], "watched ConfigMap before the watch")
        rv = listed.metadata.resource_version
        events, errors = [], []
        w = watch.Watch()
        started = threading.Event()

        def run():
            try:
                started.set()
                # From the list's resourceVersion: no change made after the
                # list can be missed, whenever the watch connects.
                for ev in w.stream(core.list_namespaced_config_map, ns,
                                   field_selector="metadata.name=watched",
                                   resource_version=rv, timeout_seconds=int(TIMEOUT)):
                    obj = ev["object"]
                    events.append((ev["type"], obj.metadata.name, (obj.data or {}).get("v")))
                    if ev["type"] == "DELETED":
                        w.stop()
            except Exception as e:  # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        started.wait()
        core.create_namespaced_config_map(ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="watched"), data={"v": "0"}))
        core.patch_namespaced_config_map("watched", ns, {"data": {"v": "1"}}, _content_type=MERGE)
        core.delete_namespaced_config_map("watched", ns)
        t.join(TIMEOUT + 5)
        expect(not t.is_alive(), f"watch did not see DELETED within {TIMEOUT:.0f}s; events: {events}")
        expect(not errors, f"watch failed: {errors}")
        expect_eq(events, [("ADDED", "watched", "0"), ("MODIFIED", "watched", "1"),
                           ("DELETED", "watched", "1")], "watch events")
        return "watch (kubernetes.watch.Watch) sees ADDED/MODIFIED/DELETED"

    def server_side_apply(self):
        ns = self.ns
        dyn = dynamic.DynamicClient(self.api)
        cms = dyn.resources.get(api_version="v1", kind="ConfigMap")

        def manifest(data):
            return {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "applied", "namespace": ns}, "data": data}

        r = cms.server_side_apply(body=manifest({"shared": "from-a", "onlya": "1"}),
                                  name="applied", namespace=ns, field_manager="py-a")
        expect_eq(dict(r.data), {"shared": "from-a", "onlya": "1"}, "data after the first apply")
        managers = [(m.manager, m.operation) for m in r.metadata.managedFields]
        expect_eq(managers, [("py-a", "Apply")], "managedFields after the first apply")
        # Re-applying the same is a no-op.
        again = cms.server_side_apply(body=manifest({"shared": "from-a", "onlya": "1"}),
                                      name="applied", namespace=ns, field_manager="py-a")
        expect_eq(again.metadata.resourceVersion, r.metadata.resourceVersion, "resourceVersion after a no-op apply")
        try:
            cms.server_side_apply(body=manifest({"shared": "from-b"}), name="applied",
                                  namespace=ns, field_manager="py-b")
            raise CheckFailed("a conflicting apply by a second manager succeeded")
        except dynamic_exceptions.ConflictError as e:
            expect_eq(e.status, 409, "conflict status")
            body = status_body(e)
            causes = [c.get("field") for c in body.get("details", {}).get("causes", [])]
            expect_eq(causes, [".data.shared"], "conflicting fields")
            expect("py-a" in body.get("message", ""), f"conflict does not name py-a: {body.get('message')}")
        expect_eq(cms.get(name="applied", namespace=ns).data.shared, "from-a", "value after the conflict")
        r = cms.server_side_apply(body=manifest({"shared": "from-b"}), name="applied", namespace=ns,
                                  field_manager="py-b", force_conflicts=True)
        expect_eq(dict(r.data), {"shared": "from-b", "onlya": "1"}, "data after force_conflicts")
        owned = {m.manager: json.dumps(m.fieldsV1.to_dict() if hasattr(m.fieldsV1, "to_dict") else m.fieldsV1)
                 for m in r.metadata.managedFields}
        expect("f:shared" in owned.get("py-b", "") and "f:shared" not in owned.get("py-a", ""),
               f"ownership of data.shared did not move to py-b: {owned}")
        expect("f:onlya" in owned.get("py-a", ""), f"py-a lost data.onlya: {owned}")
        # Dropping a field from one's apply removes it when no one else owns it.
        r = cms.server_side_apply(body=manifest({}), name="applied", namespace=ns, field_manager="py-a")
        expect_eq(dict(r.data), {"shared": "from-b"}, "data after py-a applied without onlya")
        # The typed client takes an apply patch too.
        t = self.core.patch_namespaced_config_map(
            "applied", ns, manifest({"shared": "from-b", "typed": "yes"}), field_manager="py-b",
            _content_type="application/apply-patch+yaml")
        expect_eq(t.data, {"shared": "from-b", "typed": "yes"}, "data after a typed apply patch")
        return "server-side apply via DynamicClient (field_manager, conflict, force_conflicts)"

    def crd(self):
        ext = client.ApiextensionsV1Api(self.api)
        crd = client.V1CustomResourceDefinition(
            metadata=client.V1ObjectMeta(name=self.crd_name, labels={"purpose": "py-client-check"}),
            spec=client.V1CustomResourceDefinitionSpec(
                group=self.group, scope="Namespaced",
                names=client.V1CustomResourceDefinitionNames(plural="gadgets", singular="gadget", kind="Gadget"),
                versions=[client.V1CustomResourceDefinitionVersion(
                    name="v1", served=True, storage=True,
                    schema=client.V1CustomResourceValidation(open_apiv3_schema=client.V1JSONSchemaProps(
                        type="object", properties={"spec": client.V1JSONSchemaProps(
                            type="object", properties={"size": client.V1JSONSchemaProps(
                                type="integer", minimum=1)})})))]))
        ext.create_custom_resource_definition(crd)
        self.crd_created = True

        def established():
            c = ext.read_custom_resource_definition(self.crd_name)
            return any(x.type == "Established" and x.status == "True"
                       for x in (c.status.conditions or [])) if c.status else False

        until("the CRD to be Established", established)
        everything = [c.metadata.name for c in ext.list_custom_resource_definition().items]
        expect(self.crd_name in everything, f"{self.crd_name} not in the CRD list {everything}")
        mine = ext.list_custom_resource_definition(label_selector="purpose=py-client-check").items
        expect(self.crd_name in [c.metadata.name for c in mine], "CRD list by label")
        co = client.CustomObjectsApi(self.api)
        obj = {"apiVersion": f"{self.group}/v1", "kind": "Gadget",
               "metadata": {"name": "g1"}, "spec": {"size": 2}}
        # The new resource is served (discovery may lag Established briefly).
        until("the custom resource to be served", lambda: co.list_namespaced_custom_object(
            self.group, "v1", self.ns, "gadgets") is not None)
        co.create_namespaced_custom_object(self.group, "v1", self.ns, "gadgets", obj)
        got = co.get_namespaced_custom_object(self.group, "v1", self.ns, "gadgets", "g1")
        expect_eq(got["spec"], {"size": 2}, "custom object spec")
        obj["metadata"]["name"] = "g2"
        obj["spec"]["size"] = 0
        e = expect_api_error(422, lambda: co.create_namespaced_custom_object(
            self.group, "v1", self.ns, "gadgets", obj), "schema validation of a custom object")
        expect("greater than or equal to 1" in str(e.body), f"validation message: {e.body}")
        return f"CustomResourceDefinition create/Established/list ({len(everything)} CRDs), custom objects"

    def token_request(self):
        ns, core = self.ns, self.core
        core.create_namespaced_service_account(ns, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name="robot")))
        tr = core.create_namespaced_service_account_token("robot", ns, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)))
        token = tr.status.token
        parts = token.split(".")
        expect_eq(len(parts), 3, "dot-separated JWT parts")
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        expect("alg" in header, f"JWT header {header}")
        expect_eq(claims.get("sub"), f"system:serviceaccount:{ns}:robot", "JWT subject")
        expect_eq(claims["exp"] - claims["iat"], 600, "token lifetime")
        expect(tr.status.expiration_timestamp is not None, "no expirationTimestamp")
        # The API server accepts it (TokenReview) ...
        review = client.AuthenticationV1Api(self.api).create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token)))
        expect(review.status.authenticated, f"TokenReview: {review.status.error}")
        expect_eq(review.status.user.username, f"system:serviceaccount:{ns}:robot", "TokenReview user")
        # ... and it is a client credential (SelfSubjectReview: whoami).
        self.robot = self._client_with_token(token)
        me = client.AuthenticationV1Api(self.robot).create_self_subject_review(client.V1SelfSubjectReview())
        expect_eq(me.status.user_info.username, f"system:serviceaccount:{ns}:robot", "whoami with the token")
        expect(f"system:serviceaccounts:{ns}" in me.status.user_info.groups, f"groups {me.status.user_info.groups}")
        return "TokenRequest for a ServiceAccount (JWT, TokenReview, whoami with it)"

    def _client_with_token(self, token):
        cfg = client.Configuration()
        base = self.api.configuration
        cfg.host = base.host
        cfg.ssl_ca_cert = base.ssl_ca_cert
        cfg.verify_ssl = base.verify_ssl
        cfg.api_key = {"authorization": "Bearer " + token}
        return client.ApiClient(cfg)

    def access_review(self):
        def review(api, verb, resource, group=""):
            r = client.AuthorizationV1Api(api).create_self_subject_access_review(client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
                    namespace=self.ns, verb=verb, resource=resource, group=group))))
            return r.status

        st = review(self.api, "create", "deployments", "apps")
        expect(st.allowed, f"caller may not create deployments: {st.reason}")
        st = review(self.robot, "delete", "secrets")
        expect(not st.allowed, "the ServiceAccount may delete secrets")
        # ... and the API server does deny it.
        expect_api_error(403, lambda: client.CoreV1Api(self.robot).list_namespaced_secret(self.ns),
                         "listing secrets with the ServiceAccount's token")
        me = client.AuthenticationV1Api(self.api).create_self_subject_review(client.V1SelfSubjectReview())
        expect(me.status.user_info.username, "caller has no username")
        return (f"SelfSubjectAccessReview (allowed for {me.status.user_info.username}, "
                "denied for the ServiceAccount)")

    def not_found(self):
        e = expect_api_error(404, lambda: self.core.read_namespaced_config_map("does-not-exist", self.ns),
                             "read of a missing ConfigMap")
        body = status_body(e)
        expect_eq((body.get("kind"), body.get("reason"), body.get("details", {}).get("name"),
                   body.get("details", {}).get("kind")),
                  ("Status", "NotFound", "does-not-exist", "configmaps"), "404 Status body")
        expect_eq(e.reason, "Not Found", "HTTP reason")
        expect_api_error(404, lambda: self.core.delete_namespaced_secret("does-not-exist", self.ns),
                         "delete of a missing Secret")
        expect_api_error(404, lambda: self.apps.read_namespaced_deployment("x", "no-such-namespace-here"),
                         "read in a missing namespace")
        dyn = dynamic.DynamicClient(self.api)
        try:
            dyn.resources.get(api_version="apps/v1", kind="Deployment").get(name="does-not-exist", namespace=self.ns)
            raise CheckFailed("dynamic get of a missing Deployment succeeded")
        except dynamic_exceptions.NotFoundError as e:
            expect_eq(e.status, 404, "dynamic client status")
        return "404 handling (ApiException status 404, NotFound Status)"

    def delete_namespace(self):
        self.core.delete_namespace(self.ns)
        until("the namespace to be finalized",
              lambda: is_not_found(lambda: self.core.read_namespace(self.ns)), timeout=TIMEOUT * 2)
        self.namespace_created = False
        if self.crd_created:
            client.ApiextensionsV1Api(self.api).delete_custom_resource_definition(self.crd_name)
            self.crd_created = False
        return "delete namespace (finalized)"

    # ---------------------------------------------------------------- driver
    def cleanup(self):
        if self.api is None:
            return
        if self.crd_created:
            try:
                client.ApiextensionsV1Api(self.api).delete_custom_resource_definition(self.crd_name)
            except ApiException:
                pass
        if self.namespace_created:
            try:
                self.core.delete_namespace(self.ns)
            except ApiException:
                pass

    def run(self):
        steps = [
            ("load kubeconfig", self.load),
            ("create namespace", self.create_namespace),
            ("ConfigMap", self.configmap),
            ("Secret", self.secret),
            ("Deployment", self.deployment),
            ("list", self.list_pagination),
            ("watch", self.watch_configmap),
            ("server-side apply", self.server_side_apply),
            ("CustomResourceDefinition", self.crd),
            ("TokenRequest", self.token_request),
            ("SelfSubjectAccessReview", self.access_review),
            ("404", self.not_found),
            ("delete namespace", self.delete_namespace),
        ]
        start = time.monotonic()
        try:
            for name, fn in steps:
                try:
                    what = fn() or name
                except CheckFailed as e:
                    print(f"FAIL {name}: {e}", flush=True)
                    return 1
                except ApiException as e:
                    print(f"FAIL {name}: unexpected API error {e.status} {e.reason}: "
                          f"{(e.body or '')[:500]}", flush=True)
                    return 1
                except Exception as e:  # a client error is a failure too
                    print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
                    return 1
                self.steps += 1
                print(f"ok {what}", flush=True)
        finally:
            self.cleanup()
        print(f"{self.steps} steps passed ({time.monotonic() - start:.1f}s)")
        return 0


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} KUBECONFIG", file=sys.stderr)
        return 2
    if not os.access(sys.argv[1], os.R_OK):
        print(f"{sys.argv[0]}: cannot read kubeconfig {sys.argv[1]}", file=sys.stderr)
        return 2
    return Checker(sys.argv[1]).run()


if __name__ == "__main__":
    sys.exit(main())
