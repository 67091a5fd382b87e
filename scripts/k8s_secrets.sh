#!/usr/bin/env bash
# Create (or update) every Secret that deploy/base references, with random credentials unless
# you pass your own in the environment. Nothing is written to disk (a generated TLS pair only briefly,
# in a private temporary folder); the values go straight to
# the cluster (or, with --dry-run, to stdout as Secret manifests for a sealed-secrets/SOPS flow).
#
#   NAMESPACE=fleet scripts/k8s_secrets.sh            # apply to the current kubectl context
#   scripts/k8s_secrets.sh --dry-run > secrets.yaml   # render only (keep that file out of git!)
#
# Optional inputs (default: 32 random hex characters each; no URL carries a credential):
#   NATS_ADMIN_PASSWORD, NATS_STORY_PASSWORD, NATS_GATEWAY_PASSWORD, NATS_PROJECTOR_PASSWORD,
#   NATS_OPERATOR_PASSWORD (one NATS identity per role, docs/security.md),
#   VALKEY_PASSWORD, NEO4J_PASSWORD, GATEWAY_TOKEN, RAY_AUTH_TOKEN
#
# TLS of the data links (NATS clients and routes, Valkey, Neo4j Bolt): a private CA (Secret
# fleet-tls-ca, ca.crt only; the workloads trust it through SSL_CERT_FILE) issues one certificate per
# server (Secrets fleet-nats-tls, fleet-valkey-tls, fleet-neo4j-tls: tls.crt, tls.key, ca.crt), made
# with openssl in a private temporary folder removed on exit. Bring your own with TLS_CA_CERT_FILE and
# TLS_CA_KEY_FILE (the script then only issues the server certificates), or manage the same Secrets
# with cert-manager (a CA Issuer and one Certificate per server writing these Secret names).
#
# The gateway's TLS pair (Secret fleet-gateway-tls, type kubernetes.io/tls): GATEWAY_TLS_CERT_FILE
# and GATEWAY_TLS_KEY_FILE (PEM files, e.g. from your CA; add GATEWAY_TLS_CA_FILE for mutual TLS,
# stored as ca.crt), or else a self-signed pair for fleet-gateway made with openssl in a private
# temporary folder that is removed on exit. Give its certificate to the agents as their CA.
#
# Rotating a value: run again with the new value, then restart the pods that read it
# (NATS: rolling restart of the StatefulSet, which reloads nats.conf with the new passwords; Neo4j: ALTER USER first, NEO4J_AUTH only applies
# to an empty data volume; Ray token: restart the RayCluster, the gateway and the CronJob pods).
set -euo pipefail

NAMESPACE="${NAMESPACE:-fleet}"
DRY_RUN=""
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
fi

random() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

NATS_ADMIN_PASSWORD="${NATS_ADMIN_PASSWORD:-$(random)}"
NATS_STORY_PASSWORD="${NATS_STORY_PASSWORD:-$(random)}"
NATS_GATEWAY_PASSWORD="${NATS_GATEWAY_PASSWORD:-$(random)}"
NATS_PROJECTOR_PASSWORD="${NATS_PROJECTOR_PASSWORD:-$(random)}"
NATS_OPERATOR_PASSWORD="${NATS_OPERATOR_PASSWORD:-$(random)}"
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

# NATS: one password per role (nats.conf: $NATS_<ROLE>_PASSWORD; clients: FLEET_NATS_PASSWORD).
secret fleet-nats <<EOF_
admin-password=${NATS_ADMIN_PASSWORD}
story-password=${NATS_STORY_PASSWORD}
gateway-password=${NATS_GATEWAY_PASSWORD}
projector-password=${NATS_PROJECTOR_PASSWORD}
operator-password=${NATS_OPERATOR_PASSWORD}
EOF_
# Valkey: requirepass (server) and FLEET_VALKEY_PASSWORD (clients).
secret fleet-valkey <<EOF_
password=${VALKEY_PASSWORD}
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
# The private CA and a certificate per data server (client and server use: NATS routes verify it).
TLS_TMP="$(mktemp -d)"
trap 'rm -rf "$TLS_TMP"' EXIT
if [[ -z "${TLS_CA_CERT_FILE:-}" ]]; then
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=fleet-actors private CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$TLS_TMP/ca.key" -out "$TLS_TMP/ca.crt" 2>/dev/null)
  TLS_CA_CERT_FILE="$TLS_TMP/ca.crt"
  TLS_CA_KEY_FILE="$TLS_TMP/ca.key"
fi
server_tls() {  # Secret NAME for Service SERVICE (and its pods, headless names included)
  local name="$1" service="$2" dir="$TLS_TMP/$1"
  mkdir -m 700 "$dir"
  local sans="DNS:${service},DNS:${service}.${NAMESPACE}.svc,DNS:${service}.${NAMESPACE}.svc.cluster.local"
  sans="${sans},DNS:*.${service}-headless,DNS:*.${service}-headless.${NAMESPACE}.svc,DNS:localhost,IP:127.0.0.1"
  (umask 077 && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=${service}" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null \
    && printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" > "$dir/ext" \
    && openssl x509 -req -in "$dir/tls.csr" -CA "$TLS_CA_CERT_FILE" -CAkey "$TLS_CA_KEY_FILE" \
      -CAcreateserial -days 365 -extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null)
  local rendered
  rendered="$(kubectl create secret generic "$name" --namespace "$NAMESPACE" --type=kubernetes.io/tls \
    --from-file=tls.crt="$dir/tls.crt" --from-file=tls.key="$dir/tls.key" \
    --from-file=ca.crt="$TLS_CA_CERT_FILE" --dry-run=client -o yaml)"
  if [[ -n "$DRY_RUN" ]]; then printf -- '---\n%s\n' "$rendered"; else printf '%s\n' "$rendered" | kubectl apply -f -; fi
}
server_tls fleet-nats-tls fleet-nats
server_tls fleet-valkey-tls fleet-valkey
server_tls fleet-neo4j-tls fleet-neo4j
rendered="$(kubectl create secret generic fleet-tls-ca --namespace "$NAMESPACE" \
  --from-file=ca.crt="$TLS_CA_CERT_FILE" --dry-run=client -o yaml)"
if [[ -n "$DRY_RUN" ]]; then printf -- '---\n%s\n' "$rendered"; else printf '%s\n' "$rendered" | kubectl apply -f -; fi

# The gateway's TLS certificate and key (mounted at /etc/fleet/gateway-tls). Restart the gateway
# Deployment after replacing them.
if [[ -z "${GATEWAY_TLS_CERT_FILE:-}" ]]; then
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
