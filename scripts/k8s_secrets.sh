#!/usr/bin/env bash
# Create (or update) every Secret that deploy/base references, with random credentials unless
# you pass your own in the environment. Nothing is written to disk; the values go straight to
# the cluster (or, with --dry-run, to stdout as Secret manifests for a sealed-secrets/SOPS flow).
#
#   NAMESPACE=fleet scripts/k8s_secrets.sh            # apply to the current kubectl context
#   scripts/k8s_secrets.sh --dry-run > secrets.yaml   # render only (keep that file out of git!)
#
# Optional inputs (default: 32 random hex characters each; hex keeps them URL-safe, since
# FLEET_NATS_URL and FLEET_VALKEY_URL carry the password):
#   NATS_PASSWORD, VALKEY_PASSWORD, NEO4J_PASSWORD, GATEWAY_TOKEN, RAY_AUTH_TOKEN
#
# Rotating a value: run again with the new value, then restart the pods that read it
# (NATS: rolling restart of the StatefulSet; Neo4j: ALTER USER first, NEO4J_AUTH only applies
# to an empty data volume; Ray token: restart the RayCluster, the gateway and the CronJob pods).
set -euo pipefail

NAMESPACE="${NAMESPACE:-fleet}"
DRY_RUN=""
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
fi

random() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

NATS_PASSWORD="${NATS_PASSWORD:-$(random)}"
VALKEY_PASSWORD="${VALKEY_PASSWORD:-$(random)}"
NEO4J_PASSWORD="${NEO4J_PASSWORD:-$(random)}"
GATEWAY_TOKEN="${GATEWAY_TOKEN:-$(random)}"
RAY_AUTH_TOKEN="${RAY_AUTH_TOKEN:-$(random)$(random)}"

# One Secret from KEY=VALUE lines on stdin (never on a command line, where `ps` would show
# them): render it with kubectl's client-side dry run, then apply it (or print it).
secret() {
  local name="$1"
  local rendered
  rendered="$(kubectl create secret generic "$name" --namespace "$NAMESPACE" \
    --from-env-file=/dev/stdin --dry-run=client -o yaml)"
  if [[ -n "$DRY_RUN" ]]; then
    printf -- '---\n%s\n' "$rendered"
  else
    printf '%s\n' "$rendered" | kubectl apply -f -
  fi
}

if [[ -z "$DRY_RUN" ]]; then
  kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE"
fi

# NATS: the server's user password (nats.conf: $NATS_FLEET_PASSWORD) and the clients' URL.
secret fleet-nats <<EOF_
password=${NATS_PASSWORD}
url=nats://fleet:${NATS_PASSWORD}@fleet-nats:4222
EOF_
# Valkey: requirepass and the clients' URL (database 0).
secret fleet-valkey <<EOF_
password=${VALKEY_PASSWORD}
url=valkey://:${VALKEY_PASSWORD}@fleet-valkey:6379/0
EOF_
# Neo4j: NEO4J_AUTH for the server's first start, password for FLEET_NEO4J_PASSWORD.
secret fleet-neo4j <<EOF_
NEO4J_AUTH=neo4j/${NEO4J_PASSWORD}
password=${NEO4J_PASSWORD}
EOF_
# The gateway's bearer token (FLEET_GATEWAY_TOKEN); give it to the agents' clients.
secret fleet-gateway <<EOF_
token=${GATEWAY_TOKEN}
EOF_
# Ray token authentication (KubeRay authOptions.secretName; the key must be auth_token).
secret fleet-ray-auth <<EOF_
auth_token=${RAY_AUTH_TOKEN}
EOF_
