#!/usr/bin/env bash
# A throwaway private CA and a server certificate signed by it, for the TLS scenario of benches/load.sh.
#   bash benches/tls/gen-certs.sh DIR
# writes DIR/ca.pem (the CA to trust), DIR/server.pem and DIR/server.key (for the upstream; SAN localhost and
# 127.0.0.1), valid for 2 days. ECDSA P-256, as large providers' edges commonly serve. Nothing here is ever
# committed: load.sh calls this at run time into its temporary directory, which it deletes on exit.
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -sha256 \
  -subj "/CN=keyproxy bench CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
  -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
cat > server.ext <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
  -days 2 -sha256 -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.key    # the CA signs once; nothing can be issued after this run
chmod 644 ca.pem server.pem
openssl verify -CAfile ca.pem server.pem >/dev/null
