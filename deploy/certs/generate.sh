#!/usr/bin/env bash
# The deployment's secrets, as Flower's certificate generator makes them: a CA, a server certificate for the
# SuperLink (and the model store, and the fleet gateway) whose SAN covers the compose host names and loopback, and
# Grafana's admin password (deploy/grafana/admin.env, made once, kept if present).
#   deploy/certs/generate.sh [extra SAN, e.g. DNS:fl.example.org or IP:10.0.0.5]
# Private keys are mode 600. The containers run as uid 10001 (docker/*.Dockerfile): as root this script gives
# server.key to that uid so the SuperLink container can read it; otherwise it says what to run. Keep ca.key off the
# server and out of every container (compose mounts ca.crt, server.pem and server.key only, never ca.key).
set -euo pipefail
cd "$(dirname "$0")"
SAN="DNS:superlink,DNS:gateway,DNS:localhost,IP:127.0.0.1${1:+,$1}"
CONTAINER_UID="${FEDHIVE_CONTAINER_UID:-10001}"
openssl req -x509 -newkey rsa:3072 -nodes -days 365 -subj "/CN=fedhive CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=superlink" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" "$SAN" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
chmod 644 ca.crt server.pem
if [ "$(id -u)" = 0 ]; then
  chown "$CONTAINER_UID" server.key
else
  echo "note: the SuperLink container (uid $CONTAINER_UID) must read server.key: sudo chown $CONTAINER_UID $(pwd)/server.key"
fi
if [ ! -s ../grafana/admin.env ]; then
  (umask 077 && printf "GF_SECURITY_ADMIN_PASSWORD=%s\n" "$(openssl rand -hex 24)" > ../grafana/admin.env)
  echo "wrote $(cd ../grafana && pwd)/admin.env (Grafana's admin password)"
fi
echo "wrote $(pwd)/ca.crt server.pem server.key (SAN $SAN); keep ca.key off the server"
