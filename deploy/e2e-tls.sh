#!/usr/bin/env bash
# Docker end-to-end check of deploy/compose.tls.yaml: makes the certificates
# with the `certs` service, brings the six services up with TLS (waiting,
# bounded, for all six to be healthy), writes and reads through the client
# container over TLS, checks that a client without the CA is refused with
# exit 3 and an `error:` line naming --cacert (and changed nothing), and
# that a plain TCP connection to a published port gets a TLS alert. ALWAYS
# tears down with `down -v` (trap). Exits non-zero with an
# "e2e-tls: FAIL:" line on any failure.
#
# Environment:
#   QUINTET_IMAGE=name:tag image to run (default quintet:latest)
#   QUINTET_SKIP_BUILD=1   use the existing image (else deploy/build.sh)
#   E2E_UP_TIMEOUT=120     seconds to wait for all six to become healthy
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
up_timeout=${E2E_UP_TIMEOUT:-120}
compose=(docker compose -f "$root/deploy/compose.yaml" -f "$root/deploy/compose.tls.yaml")
compose_all=("${compose[@]}" --profile ha --profile tools)
passed=0
step=setup

say() { echo "e2e-tls: $*" >&2; }
fail() {
    say "FAIL: $step: $*"
    exit 1
}
ok() {
    passed=$((passed + 1))
    say "ok: $step"
}
t() {
    local secs=$1
    shift
    timeout --kill-after=10 "$secs" "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0)); then
        t 30 "${compose_all[@]}" ps -a >&2 || true
        t 30 "${compose_all[@]}" logs --no-color --tail 20 >&2 || true
    fi
    if [[ -n ${brought_up:-} ]]; then
        say "tearing down: docker compose down -v"
        t 120 "${compose_all[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
            || { say "FAIL: docker compose down -v failed"; rc=1; }
    fi
    if ((rc == 0)); then say "PASS: $passed passed, 0 failed"; else say "$passed passed, 1 failed"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n $(docker ps -aq --filter label=com.docker.compose.project=quintet) ]]; then
    fail "containers of compose project quintet exist already; remove them first (docker compose -f deploy/compose.yaml --profile ha down -v)"
fi
if [[ ${QUINTET_SKIP_BUILD:-0} != 1 ]]; then
    step=build
    "$root/deploy/build.sh" >&2 || fail "deploy/build.sh failed"
    ok
fi

brought_up=1
step="certs init in the certs volume"
out=$(t 60 "${compose[@]}" run --rm certs 2>&1) || fail "$out"
grep -q 'ca.crt' <<<"$out" || fail "no CA made: $out"
ok

step="up with TLS, all six healthy"
t "$((up_timeout + 30))" "${compose[@]}" up -d --wait --wait-timeout "$up_timeout" >/dev/null 2>&1 \
    || fail "not all six became healthy within ${up_timeout}s"
ok

step="put and get over TLS"
out=$(t 60 "${compose[@]}" run --rm -T client put tls-key tls-value 2>&1) || fail "put: $out"
got=$(t 60 "${compose[@]}" run --rm -T client get tls-key --at 3 2>/dev/null) || fail "get failed"
[[ $got == tls-value ]] || fail "read back '$got'"
ok

step="a client without the CA is refused (exit 3, --cacert named)"
set +e
out=$(t 60 docker run --rm --network quintet_net "${QUINTET_IMAGE:-quintet:latest}" \
    /quintet --endpoints participant-1:7701 put tls-key plain 2>&1)
rc=$?
set -e
((rc == 3)) || fail "exit $rc, not 3: $out"
grep -q '^error: .*--cacert' <<<"$out" || fail "unclear error: $out"
got=$(t 60 "${compose[@]}" run --rm -T client get tls-key 2>/dev/null) || fail "get failed"
[[ $got == tls-value ]] || fail "the refused write changed the value to '$got'"
ok

step="plain TCP to a published TLS port gets a TLS alert"
first=$(t 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/7701; printf "\0\0\0\1x" >&3; head -c 1 <&3 | od -An -tx1' | tr -d ' ')
[[ $first == 15 ]] || fail "first byte back was '$first', not a TLS alert (15)"
ok
