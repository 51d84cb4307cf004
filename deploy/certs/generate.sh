#!/usr/bin/env bash
# The deployment's secrets, as Flower's certificate generator makes them: a CA, a server certificate for the
# SuperLink (and the model store, and the fleet gateway) whose SAN covers the compose host names and loopback; an
# ECDSA P-384 key pair per compose agent for Flower's node authentication (nodes/AGENT.key and .key.pub, as
# ssh-keygen -t ecdsa -b 384 makes them; kept if present); and Grafana's admin password (deploy/grafana/admin.env,
# made once, kept if present).
#   deploy/certs/generate.sh [extra SAN, e.g. DNS:fl.example.org or IP:10.0.0.5]
# Private keys are mode 600. The containers run as uid 10001 (docker/*.Dockerfile): as root this script gives
# server.key and the node keys to that uid so the containers can read them; otherwise it says what to run. Keep ca.key off the
# server and out of every container (compose mounts ca.crt, server.pem and server.key only, never ca.key).
set -euo pipefail
cd "$(dirname "$0")"
SAN="DNS:superlink,DNS:gateway,DNS:localhost,IP:127.0.0.1${1:+,$1}"
CONTAINER_UID="${FEDHIVE_CONTAINER_UID:-10001}"
AGENTS="${FEDHIVE_AGENTS:-agent-gpu agent-cpu-1 agent-cpu-2 agent-rpi4-1 agent-rpi4-2 agent-rpi4-3}"
command -v ssh-keygen >/dev/null || { echo "generate.sh needs ssh-keygen (apt-get install openssh-client)"; exit 1; }
openssl req -x509 -newkey rsa:3072 -nodes -days 365 -subj "/CN=fedhive CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=superlink" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" "$SAN" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
chmod 644 ca.crt server.pem
mkdir -p nodes
for a in $AGENTS; do
  [ -s "nodes/$a.key" ] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "$a" -f "nodes/$a.key"
  chmod 600 "nodes/$a.key"
done
if [ "$(id -u)" = 0 ]; then
  chown "$CONTAINER_UID" server.key nodes/*.key
else
  echo "note: the containers (uid $CONTAINER_UID) must read the private keys: sudo chown $CONTAINER_UID $(pwd)/server.key $(pwd)/nodes/*.key"
fi
if [ -d ../grafana ] && [ ! -s ../grafana/admin.env ]; then  # ../grafana: run from deploy/certs (a copy elsewhere skips it)
  (umask 077 && printf "GF_SECURITY_ADMIN_PASSWORD=%s\n" "$(openssl rand -hex 24)" > ../grafana/admin.env)
  echo "wrote $(cd ../grafana && pwd)/admin.env (Grafana's admin password)"
fi
echo "wrote $(pwd)/ca.crt server.pem server.key (SAN $SAN) and nodes/ (one key per agent); keep ca.key off the server"
