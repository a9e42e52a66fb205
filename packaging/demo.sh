#!/usr/bin/env bash
# make demo: the whole path on a machine with no internet. It starts a local
# stand-in for upstream (trackd-bench upstream), runs trackd against it with
# both listeners, sends a few calls with curl and prints what upstream got.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "demo: curl is needed (apt-get install curl)" >&2; exit 1; }

dir=.demo
rm -rf "$dir"; mkdir -p "$dir"
up_addr=127.0.0.1:8791
http_addr=127.0.0.1:8792
sock="$dir/trackd.sock"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

bin/trackd-bench upstream -addr "$up_addr" >"$dir/upstream.out" 2>&1 &
pids+=($!)

cat >"$dir/config.yaml" <<YAML
listen:
  http: "$http_addr"
  unix: "./trackd.sock"
upstream:
  url: "http://$up_addr"
  api_key: "demo-key"
  rate: 50
  retry: {initial: 200ms, max: 5s}
spool:
  path: "./spool.db"
shutdown:
  timeout: 5s
YAML
bin/trackd run -config "$dir/config.yaml" 2>"$dir/trackd.log" &
pids+=($!)

for _ in $(seq 100); do
  curl -fsS "http://$http_addr/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$http_addr/readyz" >/dev/null || { echo "demo: trackd did not start:"; cat "$dir/trackd.log"; exit 1; }

say() { printf '\n$ %s\n' "$*"; }
post() { # post URL-or-socket path body
  if [ "$1" = unix ]; then
    say "curl --unix-socket $sock http://trackd$2 -d '$3'"
    curl -sS --unix-socket "$sock" "http://trackd$2" -H 'Content-Type: application/json' -d "$3"; echo
  else
    say "curl http://$http_addr$2 -d '$3'"
    curl -sS "http://$http_addr$2" -H 'Content-Type: application/json' -d "$3"; echo
  fi
}
post tcp  /api/v1/track    '{"event":"SIGNED_UP","userId":"42","properties":{"plan":"pro"}}'
post tcp  /api/v1/track    '{"event":"CLICKED_CHECKOUT","anonymousId":"a-77","properties":{"price":100,"category":"Apparel"}}'
post unix /api/v1/identify '{"userId":"42","traits":{"name":"Ada","email":"ada@example.com","$tags":["Cohort 7"]}}'
post unix /api/v1/track    '{"event":"VIEWED_PAGE","userId":"42","timestamp":"2021-12-02T00:30:08.276Z"}'
echo; echo "# and what a client gets for a bad event (not stored):"
post tcp  /api/v1/track    '{"userId":"42","properties":[1,2]}'

echo; echo "# waiting for the forwarder to deliver the 4 good events..."
for _ in $(seq 100); do
  n=$(curl -fsS "http://$up_addr/_upstreamtest/stats" | sed -n 's/.*"received":\([0-9]*\).*/\1/p')
  [ "${n:-0}" -ge 4 ] && break
  sleep 0.1
done
echo; echo "# what upstream received (note timestamp and apiKey filled in by trackd):"
curl -fsS "http://$up_addr/_upstreamtest/received"; echo
echo; echo "# trackd's own view:"
bin/trackd status -config "$dir/config.yaml"
