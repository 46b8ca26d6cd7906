#!/usr/bin/env bash
# Run a local three-node Parley cluster: one etcd (membership and history, --store etcd)
# and three chat nodes on http://127.0.0.1:8081, :8082 and :8083. Ctrl-C stops everything.
# Everything runs with TLS, as in production: a throwaway CA (written by the test kit's
# parley-pki, rcgen) signs etcd's server certificate (etcd runs with --client-cert-auth), each
# node's etcd client certificate and each node's certificate for the mutual-TLS links between
# nodes (internal listeners on 127.0.0.1:8181, :8182, ...).
#   PARLEY_NODES=N   how many nodes (default 3)
#   PARLEY_BASE_PORT first node's port minus one (default 8080)
# Extra arguments go to every chat-node.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --cluster
cargo build --release -p chat-node -p parley-testkit --bin chat-node --bin parley-pki
nodes="${PARLEY_NODES:-3}"
base="${PARLEY_BASE_PORT:-8080}"
work="$(mktemp -d /tmp/parley-cluster.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port="$(free_port)"; peer_port="$(free_port)"
ids=(); for i in $(seq 1 "$nodes"); do ids+=("n$i"); done
./target/release/parley-pki "$work/pki" parley "${ids[@]}"
pki="$work/pki"
# Every process started here has $work in its command line: stop them by it (the PIDs of
# jobs whose output goes through a process substitution are not reliably in $!).
cleanup() {
  trap - EXIT INT TERM
  pkill -TERM -f -- "$work" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped; data in $work"
}
trap cleanup EXIT INT TERM

etcd --name parley --data-dir "$work/etcd" \
  --listen-client-urls "https://127.0.0.1:$client_port" --advertise-client-urls "https://127.0.0.1:$client_port" \
  --cert-file "$pki/etcd-server.crt" --key-file "$pki/etcd-server.key" \
  --trusted-ca-file "$pki/ca.crt" --client-cert-auth \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "parley=http://127.0.0.1:$peer_port" \
  --max-txn-ops 1024 --max-request-bytes 4194304 --quota-backend-bytes 8589934592 \
  --auto-compaction-mode revision --auto-compaction-retention 100000 \
  >"$work/etcd.log" 2>&1 &
for _ in $(seq 1 100); do
  python3 -c "
import ssl, urllib.request
ctx = ssl.create_default_context(cafile='$pki/ca.crt')
ctx.load_cert_chain('$pki/client-etcd-n1.crt', '$pki/client-etcd-n1.key')
urllib.request.urlopen('https://127.0.0.1:$client_port/health', timeout=1, context=ctx)" 2>/dev/null && break
  sleep 0.1
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret"
# A local cluster is driven by tools on this one machine (parley-bench, tests by hand): the
# per-user send rate and logins per address are off unless set (PARLEY_* or a flag).
export PARLEY_MAX_SENDS_PER_SECOND="${PARLEY_MAX_SENDS_PER_SECOND:-0}"
export PARLEY_MAX_LOGINS_PER_ADDRESS="${PARLEY_MAX_LOGINS_PER_ADDRESS:-0}"
for i in $(seq 1 "$nodes"); do
  port=$((base + i))
  ./target/release/chat-node --listen "127.0.0.1:$port" --internal-listen "127.0.0.1:$((base + 100 + i))" \
    --node-id "n$i" --cluster parley --data-dir "$work/n$i" \
    --etcd "https://127.0.0.1:$client_port" --store etcd --token-secret-file "$work/secret" \
    --etcd-ca-file "$pki/ca.crt" --etcd-cert-file "$pki/client-etcd-n$i.crt" --etcd-key-file "$pki/client-etcd-n$i.key" \
    --internal-ca-file "$pki/ca.crt" --internal-cert-file "$pki/n$i.crt" --internal-key-file "$pki/n$i.key" "$@" \
    > >(sed -u "s/^/[n$i] /") 2>&1 &
done
echo "etcd at https://127.0.0.1:$client_port (client certificates in $pki); nodes at http://127.0.0.1:$((base + 1))..$((base + nodes)); logs and data in $work"
wait
