#!/usr/bin/env bash
# Property tests of the served OpenAPI document (schemathesis, from PyPI): every route,
# method and documented status, against a real service on 127.0.0.1:0, bounded in
# examples and time. Usage: tests/schemathesis/run.sh [path to the luna-lambda binary]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/target/debug/luna-lambda}"
venv="${SCHEMATHESIS_VENV:-$root/target/schemathesis-venv}"

if [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi

work="$(mktemp -d)"
trap 'kill "$service" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/log" &
service=$!
for _ in $(seq 1 100); do
    grep -q "listening on" "$work/out" 2>/dev/null && break
    sleep 0.1
done
base="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/out" | head -1)"
[ -n "$base" ] || { cat "$work/log"; exit 1; }

# A running lambda for the operations on an existing one (see schemathesis.toml): the
# hello example (.ci/run builds it for wasm32-wasip2).
wasm="$root/target/wasm32-wasip2/release/hello.wasm"
[ -f "$wasm" ] || (cd "$root" && cargo build --release --target wasm32-wasip2 -p hello)
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[2], "w").write(sys.argv[1], "lambda.wasm")' \
    "$wasm" "$work/hello.zip"
export LUNA_ACCOUNT_ID=8950722f-3fd4-4223-b48f-03f95f0e8dfb
LUNA_LAMBDA_ID="$(curl -fsS -H "Luna-Account-Id: $LUNA_ACCOUNT_ID" \
    -F "archive=@$work/hello.zip;type=application/zip" \
    -F 'credentials={"token":"schemathesis"};type=application/json' \
    -F 'parameters={"lambda_name":"hello"};type=application/json' \
    "$base/1/lambdas" | python3 -c 'import json, sys; print(json.load(sys.stdin)["lambda_id"])')"
export LUNA_LAMBDA_ID
for _ in $(seq 1 300); do
    status="$(curl -fsS "$base/1/lambdas/$LUNA_LAMBDA_ID/status" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')"
    [ "$status" = running ] && break
    [ "$status" = failed ] && { echo "the hello lambda failed to build" >&2; exit 1; }
    sleep 0.2
done
[ "$status" = running ] || { echo "the hello lambda never ran" >&2; exit 1; }

cd "$here"
PYTHONPATH="$here" SCHEMATHESIS_HOOKS=hooks timeout 900 "$venv/bin/st" \
    --config-file "$here/schemathesis.toml" run \
    "$base/1/docs/spec" --url "$base" \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" --workers 2 \
    --request-timeout 10 --seed "${SCHEMATHESIS_SEED:-20261201}"
