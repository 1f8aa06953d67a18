#!/usr/bin/env bash
# kubectl, a client nobody here wrote, against `calico-migrate sandbox`.
# Usage: CALICO_MIGRATE=path/to/calico-migrate tests/kubectl/sandbox.sh
# Every step checks what kubectl printed; the first failure stops the script.
set -euo pipefail

BIN=${CALICO_MIGRATE:?set CALICO_MIGRATE to the calico-migrate binary}
W=$(mktemp -d)
SANDBOX_PID=
cleanup() {
  if [ -n "$SANDBOX_PID" ] && kill -0 "$SANDBOX_PID" 2>/dev/null; then kill "$SANDBOX_PID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT

step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() { # expect REGEX FILE: the output must match REGEX (extended; columns vary in width)
  grep -qE -- "$1" "$2" || { echo "--- output of the failing step:" >&2; cat "$2" >&2; fail "expected '$1'"; }
}

step "start the sandbox"
# The API server alone: this script patches workload status itself, as a controller would.
"$BIN" sandbox --no-controllers --listen 127.0.0.1:0 --kubeconfig-out "$W/kubeconfig" --state-dir "$W/state" >"$W/sandbox.out" 2>"$W/sandbox.err" &
SANDBOX_PID=$!
for _ in $(seq 1 100); do [ -s "$W/sandbox.out" ] && break; sleep 0.1; done
[ "$(head -n1 "$W/sandbox.out")" = "$W/kubeconfig" ] || { cat "$W/sandbox.err" >&2; fail "the sandbox did not print its kubeconfig path"; }
export KUBECONFIG="$W/kubeconfig" KUBECACHEDIR="$W/cache"
k() { kubectl --request-timeout=20s "$@"; }

step "version and discovery"
k version >"$W/out"; expect "Server Version: v1.34" "$W/out"
k api-resources >"$W/out"; expect "daemonsets" "$W/out"; expect "customresourcedefinitions" "$W/out"

step "fixtures by server-side apply: nodes, a kube-system DaemonSet, a Deployment"
cat >"$W/base.yaml" <<'YAML'
apiVersion: v1
kind: Node
metadata:
  name: ip-10-0-1-11.ec2.internal
  labels: {eks.amazonaws.com/nodegroup: ng-1, kubernetes.io/os: linux}
---
apiVersion: v1
kind: Node
metadata:
  name: ip-10-0-2-22.ec2.internal
  labels: {eks.amazonaws.com/nodegroup: ng-1, kubernetes.io/os: linux}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: calico-node-test
  namespace: kube-system
  labels: {app.kubernetes.io/name: calico-node-test}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: calico-node-test}}
  template:
    metadata: {labels: {app.kubernetes.io/name: calico-node-test}}
    spec:
      containers: [{name: calico-node, image: "quay.io/calico/node:v3.19.1"}]
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "nginx:1.27"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  nodeName: ip-10-0-1-11.ec2.internal
  containers: [{name: web, image: "nginx:1.27"}]
YAML
k apply --server-side -f "$W/base.yaml" >"$W/out"
expect "node/ip-10-0-1-11.ec2.internal serverside-applied" "$W/out"
expect "daemonset.apps/calico-node-test serverside-applied" "$W/out"
for n in ip-10-0-1-11.ec2.internal ip-10-0-2-22.ec2.internal; do
  k patch node "$n" --subresource=status --type merge \
    -p '{"status":{"conditions":[{"type":"Ready","status":"True"}],"nodeInfo":{"kubeletVersion":"v1.33.0-eks"}}}' >/dev/null
done
k -n kube-system patch ds calico-node-test --subresource=status --type merge \
  -p '{"status":{"desiredNumberScheduled":2,"currentNumberScheduled":2,"numberReady":2,"updatedNumberScheduled":2,"numberAvailable":2,"numberMisscheduled":0}}' >/dev/null

step "a multi-document manifest with a CRD and objects of that CRD"
cat >"$W/crd.yaml" <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: globalnetworkpolicies.crd.projectcalico.org}
spec:
  group: crd.projectcalico.org
  scope: Cluster
  names: {kind: GlobalNetworkPolicy, listKind: GlobalNetworkPolicyList, plural: globalnetworkpolicies, singular: globalnetworkpolicy}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-aws-imds}
spec:
  selector: projectcalico.org/namespace not in {"kube-system"}
  types: [Egress]
  egress:
  - action: Deny
    protocol: TCP
    destination: {nets: [169.254.169.254/32], ports: [80, 443]}
  - action: Allow
    destination: {nets: [0.0.0.0/0]}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: allow-dns}
spec: {selector: all(), types: [Egress]}
YAML
# kubectl maps every document before applying any; a CRD and its objects in one
# file therefore take two runs on a real cluster too ("ensure CRDs are installed first").
if ! k apply --server-side -f "$W/crd.yaml" >"$W/out" 2>&1; then
  expect "ensure CRDs are installed first" "$W/out"
  k apply --server-side -f "$W/crd.yaml" >"$W/out"
fi
expect "globalnetworkpolicy.crd.projectcalico.org/deny-aws-imds serverside-applied" "$W/out"
k apply --server-side -f "$W/crd.yaml" >"$W/out"   # idempotent
expect "customresourcedefinition.apiextensions.k8s.io/globalnetworkpolicies.crd.projectcalico.org serverside-applied" "$W/out"
k wait --for=condition=Established crd/globalnetworkpolicies.crd.projectcalico.org --timeout=10s >"$W/out"
expect "condition met" "$W/out"

step "get with -o json and the default table"
k get nodes >"$W/out"; expect "ip-10-0-1-11.ec2.internal +Ready" "$W/out"; expect "v1.33.0-eks" "$W/out"
k get nodes -o json >"$W/out"; expect '"kind": "List"' "$W/out"; expect '"eks.amazonaws.com/nodegroup": "ng-1"' "$W/out"
k get pods -A >"$W/out"; expect "NAMESPACE" "$W/out"; expect "demo " "$W/out"; expect "web-0" "$W/out"
k get pods -A -o json >"$W/out"; expect '"nodeName": "ip-10-0-1-11.ec2.internal"' "$W/out"
k get ds -n kube-system >"$W/out"; expect "DESIRED" "$W/out"; expect "calico-node-test +2 +2 +2" "$W/out"
k get ds -n kube-system -o json >"$W/out"; expect '"numberReady": 2' "$W/out"
k get crd >"$W/out"; expect "globalnetworkpolicies.crd.projectcalico.org" "$W/out"
k get crd -o json >"$W/out"; expect '"group": "crd.projectcalico.org"' "$W/out"
k get globalnetworkpolicies >"$W/out"; expect "deny-aws-imds" "$W/out"; expect "allow-dns" "$W/out"
k get globalnetworkpolicies.crd.projectcalico.org deny-aws-imds -o json >"$W/out"; expect '"169.254.169.254/32"' "$W/out"
k get nodes -l eks.amazonaws.com/nodegroup=ng-1 -o name >"$W/out"; expect "node/ip-10-0-2-22.ec2.internal" "$W/out"
k get pods -A --field-selector spec.nodeName=ip-10-0-1-11.ec2.internal -o name >"$W/out"; expect "pod/web-0" "$W/out"
if k get widgets >"$W/out" 2>&1; then fail "an unknown resource type was accepted"; fi
expect "the server doesn't have a resource type \"widgets\"" "$W/out"

step "label, annotate, patch --type merge and --type json"
k label node ip-10-0-1-11.ec2.internal projectcalico.org/operator-node-migration=pre-operator >"$W/out"; expect "labeled" "$W/out"
k get node ip-10-0-1-11.ec2.internal -o jsonpath='{.metadata.labels.projectcalico\.org/operator-node-migration}' >"$W/out"; expect "pre-operator" "$W/out"
k label globalnetworkpolicy deny-aws-imds owner=platform >"$W/out"; expect "labeled" "$W/out"
k annotate -n kube-system ds calico-node-test meta.helm.sh/release-name=calico >"$W/out"; expect "annotated" "$W/out"
k get -n kube-system ds calico-node-test -o jsonpath='{.metadata.annotations}' >"$W/out"; expect "meta.helm.sh/release-name" "$W/out"
k -n demo patch deploy web --type merge -p '{"spec":{"replicas":3}}' >"$W/out"; expect "patched" "$W/out"
k -n demo patch deploy web --type json -p '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:1.28"}]' >"$W/out"; expect "patched" "$W/out"
k -n demo get deploy web -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].image} {.metadata.generation}' >"$W/out"; expect "3 nginx:1.28 3" "$W/out"
k -n kube-system patch ds calico-node-test -p '{"spec":{"template":{"spec":{"nodeSelector":{"projectcalico.org/operator-node-migration":"pre-operator"}}}}}' >"$W/out"; expect "patched" "$W/out"
k patch globalnetworkpolicy allow-dns --type merge -p '{"spec":{"order":100}}' >"$W/out"; expect "patched" "$W/out"
if k -n demo patch deploy web --type json -p '[{"op":"remove","path":"/spec/nope"}]' >"$W/out" 2>&1; then fail "a bad JSON patch was accepted"; fi
expect "The request is invalid" "$W/out"
# A server-side apply conflict names the manager holding the field.
printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\nspec: {replicas: 1}\n' >"$W/conflict.yaml"
if k apply --server-side --field-manager=other -f "$W/conflict.yaml" >"$W/out" 2>&1; then fail "the apply conflict was not reported"; fi
expect 'conflict with "kubectl-patch"' "$W/out"
k apply --server-side --field-manager=other --force-conflicts -f "$W/conflict.yaml" >"$W/out"; expect "serverside-applied" "$W/out"

step "get --watch sees a change made meanwhile"
(k -n demo get configmaps --watch --request-timeout=6s >"$W/watch.out" 2>&1 || true) &
WATCH_PID=$!
sleep 2
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: seen-by-watch, namespace: demo}\n' | k apply --server-side -f - >/dev/null
wait "$WATCH_PID"
expect "seen-by-watch" "$W/watch.out"

step "kubectl wait --for=condition=Available on a Deployment"
(k -n demo wait --for=condition=Available deploy/web --timeout=15s >"$W/wait.out" 2>&1; echo $? >"$W/wait.rc") &
WAIT_PID=$!
sleep 1
k -n demo patch deploy web --subresource=status --type merge \
  -p '{"status":{"replicas":1,"readyReplicas":1,"availableReplicas":1,"updatedReplicas":1,"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"}]}}' >/dev/null
wait "$WAIT_PID"
[ "$(cat "$W/wait.rc")" = 0 ] || { cat "$W/wait.out" >&2; fail "kubectl wait did not see the condition"; }
expect "condition met" "$W/wait.out"
k -n demo get deploy web >"$W/out"; expect "web +1/1" "$W/out"

step "delete --wait waits for finalizers"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: demo, finalizers: [example.com/hold]}\n' | k apply --server-side -f - >/dev/null
(k -n demo delete configmap held --wait=true --timeout=15s >"$W/del.out" 2>&1; echo $? >"$W/del.rc") &
DEL_PID=$!
# Wait (up to 20 s on a loaded machine) until kubectl's DELETE has marked the object.
for _ in $(seq 1 100); do
  k -n demo get configmap held -o jsonpath='{.metadata.deletionTimestamp}' >"$W/out"
  grep -q T "$W/out" && break
  sleep 0.2
done
expect "T" "$W/out"
kill -0 "$DEL_PID" 2>/dev/null || fail "delete --wait returned while a finalizer still held the object"
k -n demo patch configmap held --type json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null
wait "$DEL_PID"
[ "$(cat "$W/del.rc")" = 0 ] || { cat "$W/del.out" >&2; fail "delete --wait failed"; }
if k -n demo get configmap held >/dev/null 2>&1; then fail "configmap held still exists"; fi
k delete globalnetworkpolicy allow-dns --wait >"$W/out"; expect "deleted" "$W/out"
k delete namespace demo --wait --timeout=15s >"$W/out"; expect "deleted" "$W/out"
if k get namespace demo >/dev/null 2>&1; then fail "namespace demo still exists"; fi
k delete crd globalnetworkpolicies.crd.projectcalico.org >/dev/null
if k get globalnetworkpolicies.crd.projectcalico.org >"$W/out" 2>&1; then fail "globalnetworkpolicies still served after its CRD was deleted"; fi

step "faults through the API"
k -n sandbox-system patch configmap faults --type merge -p '{"data":{"api-errors":"1"}}' >/dev/null
if k get pods -A >"$W/out" 2>&1; then fail "api-errors:1 did not fail a request"; fi
k -n sandbox-system patch configmap faults --type merge -p '{"data":{"api-errors":"0"}}' >/dev/null
k get pods -A >/dev/null 2>&1

step "SIGTERM stops the sandbox cleanly"
kill -TERM "$SANDBOX_PID"
wait "$SANDBOX_PID" || fail "the sandbox exited with status $?"
SANDBOX_PID=
echo "kubectl script: all steps passed"
