#!/usr/bin/env bash
# Create (or update) every Secret that deploy/base references, with random credentials unless
# you pass your own in the environment. Nothing is written to disk (a generated TLS pair only briefly,
# in a private temporary folder); the values go straight to
# the cluster (or, with --dry-run, to stdout as Secret manifests for a sealed-secrets/SOPS flow).
#
#   NAMESPACE=fleet scripts/k8s_secrets.sh            # apply to the current kubectl context
#   scripts/k8s_secrets.sh --dry-run > secrets.yaml   # render only (keep that file out of git!)
#
# Optional inputs (default: 32 random hex characters each; hex keeps them URL-safe, since
# FLEET_NATS_URL and FLEET_VALKEY_URL carry the password):
#   NATS_PASSWORD, VALKEY_PASSWORD, NEO4J_PASSWORD, GATEWAY_TOKEN, RAY_AUTH_TOKEN
#
# The gateway's TLS pair (Secret fleet-gateway-tls, type kubernetes.io/tls): GATEWAY_TLS_CERT_FILE
# and GATEWAY_TLS_KEY_FILE (PEM files, e.g. from your CA; add GATEWAY_TLS_CA_FILE for mutual TLS,
# stored as ca.crt), or else a self-signed pair for fleet-gateway made with openssl in a private
# temporary folder that is removed on exit. Give its certificate to the agents as their CA.
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
# The gateway's TLS certificate and key (mounted at /etc/fleet/gateway-tls). Restart the gateway
# Deployment after replacing them.
if [[ -z "${GATEWAY_TLS_CERT_FILE:-}" ]]; then
  TLS_TMP="$(mktemp -d)"
  trap 'rm -rf "$TLS_TMP"' EXIT
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=fleet-gateway" \
    -addext "subjectAltName=DNS:fleet-gateway,DNS:fleet-gateway.${NAMESPACE}.svc,DNS:fleet-gateway.${NAMESPACE}.svc.cluster.local" \
    -keyout "$TLS_TMP/tls.key" -out "$TLS_TMP/tls.crt" 2>/dev/null)
  GATEWAY_TLS_CERT_FILE="$TLS_TMP/tls.crt"
  GATEWAY_TLS_KEY_FILE="$TLS_TMP/tls.key"
  echo "fleet-gateway-tls: self-signed; the agents trust it with:" >&2
  echo "  kubectl -n $NAMESPACE get secret fleet-gateway-tls -o jsonpath='{.data.tls\.crt}' | base64 -d" >&2
fi
tls_args=(--cert="$GATEWAY_TLS_CERT_FILE" --key="$GATEWAY_TLS_KEY_FILE")
rendered="$(kubectl create secret tls fleet-gateway-tls --namespace "$NAMESPACE" "${tls_args[@]}" \
  --dry-run=client -o yaml)"
if [[ -n "${GATEWAY_TLS_CA_FILE:-}" ]]; then
  # mutual TLS: the CA of the agents' client certificates, as ca.crt next to the pair
  rendered="$(printf '%s\n' "$rendered" | sed "s|^data:|data:\n  ca.crt: $(base64 -w0 < "$GATEWAY_TLS_CA_FILE")|")"
fi
if [[ -n "$DRY_RUN" ]]; then
  printf -- '---\n%s\n' "$rendered"
else
  printf '%s\n' "$rendered" | kubectl apply -f -
fi
