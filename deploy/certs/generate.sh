#!/usr/bin/env bash
# Certificates for deploy/with-tls.yml, as Flower's certificate generator makes them: a CA, and a server certificate
# for the SuperLink (and the model store) whose SAN covers the compose host name and loopback.
#   deploy/certs/generate.sh [extra SAN, e.g. DNS:fl.example.org or IP:10.0.0.5]
set -euo pipefail
cd "$(dirname "$0")"
SAN="DNS:superlink,DNS:localhost,IP:127.0.0.1${1:+,$1}"
openssl req -x509 -newkey rsa:3072 -nodes -days 365 -subj "/CN=fedhive CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=superlink" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" "$SAN" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
echo "wrote $(pwd)/ca.crt server.pem server.key (SAN $SAN); keep ca.key off the server"
