#!/usr/bin/env bash
# Docker end-to-end test of deploy/: builds the image, brings the six-service
# cluster up, waits (bounded) for all six to be healthy, writes through the
# client container at one replica and reads it back at others, checks the
# cluster status, then ALWAYS tears everything down with `down -v` (trap),
# also on failure or Ctrl-C. Exits non-zero with an "e2e: FAIL:" line on any
# failure. Works from any cwd; installs Compose v2+ if missing.
#
# Environment:
#   QUINTET_IMAGE=name:tag image to build and run (default quintet:latest)
#   QUINTET_SKIP_BUILD=1   use the existing image
#   QUINTET_SKIP_CARGO=1   rebuild the image from already-built binaries
#   E2E_KEEP=1             leave the cluster running (no `down -v`) for a look
#   E2E_UP_TIMEOUT=120     seconds to wait for all six to become healthy
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
up_timeout=${E2E_UP_TIMEOUT:-120}
image=${QUINTET_IMAGE:-quintet:latest}   # compose.yaml and build.sh read it too
services=(coordinator participant-1 participant-2 participant-3 participant-4 participant-5)
compose=(docker compose -f "$root/deploy/compose.yaml")
passed=0
step=setup

say() { echo "e2e: $*" >&2; }
fail() {
    say "FAIL: $step: $*"
    exit 1
}
ok() {
    passed=$((passed + 1))
    say "ok: $step"
}
# Runs a command with a time limit: t SECONDS CMD...
t() {
    local secs=$1
    shift
    timeout --kill-after=10 "$secs" "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0)); then
        say "--- cluster state at failure ---"
        t 30 "${compose[@]}" ps -a >&2 || true
        t 30 "${compose[@]}" logs --no-color --tail 40 >&2 || true
    fi
    if [[ ${E2E_KEEP:-0} == 1 ]]; then
        say "E2E_KEEP=1: leaving the cluster up; remove it with: ${compose[*]} down -v"
    elif [[ -n ${brought_up:-} ]]; then
        say "tearing down: docker compose down -v"
        t 120 "${compose[@]}" --profile tools down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
            || { say "FAIL: docker compose down -v failed"; rc=1; }
    fi
    if ((rc == 0)); then
        say "PASS: $passed passed, 0 failed"
    else
        say "$passed passed, 1 failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# quintet in the client container; all arguments are quintet's.
client() { t 60 docker compose --progress quiet -f "$root/deploy/compose.yaml" run --rm --no-deps -T client "$@"; }

step="docker reachable"
command -v docker >/dev/null || fail "docker is not installed"
t 30 docker info >/dev/null 2>&1 || fail "cannot talk to the Docker daemon"
ok

step="compose v2+"
t 360 "$root/deploy/install-compose.sh" >&2 || fail "no usable \`docker compose\` (see deploy/install-compose.sh)"
ok

step="no cluster already running"
existing=$(t 30 docker ps -aq --filter label=com.docker.compose.project=quintet)
[[ -z $existing ]] || fail "containers of compose project 'quintet' already exist; this test would destroy them. Remove them first: ${compose[*]} down -v"
ok

if [[ ${QUINTET_SKIP_BUILD:-0} != 1 ]]; then
    step="build image"
    t 2400 "$root/deploy/build.sh" >&2 || fail "deploy/build.sh failed"
    ok
fi
step="image present"
t 30 docker image inspect "$image" >/dev/null 2>&1 || fail "no image $image (run deploy/build.sh)"
ok

step="up (all six healthy within ${up_timeout}s)"
brought_up=1
t $((up_timeout + 30)) "${compose[@]}" up -d --wait --wait-timeout "$up_timeout" >&2 \
    || fail "the cluster did not come up healthy"
for s in "${services[@]}"; do
    id=$(t 30 "${compose[@]}" ps -q "$s")
    [[ -n $id ]] || fail "service $s has no container"
    h=$(t 30 docker inspect -f '{{.State.Health.Status}}' "$id")
    [[ $h == healthy ]] || fail "service $s is $h, not healthy"
done
ok

step="host ports published on 127.0.0.1 only"
for p in 7700 7701 7702 7703 7704 7705; do
    t 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null || fail "nothing answers on 127.0.0.1:$p"
done
bindings=$(t 30 docker ps --filter label=com.docker.compose.project=quintet --format '{{.Ports}}')
if grep -Eo '[0-9.:\[\]]+:77[0-9][0-9]->' <<<"$bindings" | grep -vq '^127\.0\.0\.1:'; then
    fail "a port is published beyond loopback: $bindings"
fi
ok

value="hello-$$-$RANDOM"
step="put at replica 1 (client container)"
out=$(client put greeting "$value" --at 1) || fail "quintet put greeting failed (exit $?)"
say "  $out"
ok

for r in 3 5; do
    step="get at replica $r (client container)"
    got=$(client get greeting --at "$r") || fail "quintet get greeting --at $r failed (exit $?)"
    [[ $got == "$value" ]] || fail "replica $r returned '$got', expected '$value'"
    ok
done

step="status: all five reachable, same version and digest"
client status >&2 || fail "quintet status failed (exit $?)"
json=$(client --output json status) || fail "quintet --output json status failed (exit $?)"
python3 - "$json" <<'PY' || fail "status does not show a converged cluster"
import json, sys
s = json.loads(sys.argv[1])
ps = s["participants"]
bad = [p["id"] for p in ps if not p["reachable"]]
assert len(ps) == 5, f"{len(ps)} participants listed"
assert not bad, f"replicas not reachable: {bad}"
assert len({p["applied"] for p in ps}) == 1, "replicas at different versions"
assert len({p["digest"] for p in ps}) == 1, "replicas with different digests"
assert s["coordinator"]["reachable"], "coordinator not reachable"
PY
ok
