#!/usr/bin/env bash
# Docker end-to-end test of deploy/: builds the image, brings the six-service
# cluster up, waits (bounded) for all six to be healthy, writes through the
# client container at one replica and reads it back at others, checks the
# cluster status. Then the `ha` profile (section "ha" below): two standby
# coordinators join and become voters, the coordinator leader's container is
# killed under a stream of writes (they must go on; the longest gap is
# printed), it is started again and must rejoin, and a standby is wiped
# (container and volume) and must rejoin from a snapshot; every write
# acknowledged meanwhile is read back. It ALWAYS tears everything down with
# `--profile ha down -v` (trap), also on failure or Ctrl-C. Exits non-zero
# with an "e2e: FAIL:" line on any failure. Works from any cwd; installs
# Compose v2+ if missing.
#
# Environment:
#   QUINTET_IMAGE=name:tag image to build and run (default quintet:latest)
#   QUINTET_SKIP_BUILD=1   use the existing image
#   QUINTET_SKIP_CARGO=1   rebuild the image from already-built binaries
#   E2E_KEEP=1             leave the cluster running (no `down -v`) for a look
#   E2E_UP_TIMEOUT=120     seconds to wait for all six to become healthy
#   E2E_HA=0               skip the `ha` section
#   E2E_HA_MAX_GAP=10      most seconds without a successful write allowed
#                          while the coordinator leader fails over
#   E2E_HA_REJOIN=60       seconds a coordinator replica gets to rejoin
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
up_timeout=${E2E_UP_TIMEOUT:-120}
image=${QUINTET_IMAGE:-quintet:latest}   # compose.yaml and build.sh read it too
services=(coordinator participant-1 participant-2 participant-3 participant-4 participant-5)
compose=(docker compose -f "$root/deploy/compose.yaml")
# Every profile with services that hold data: `down -v` without `--profile
# ha` would leave the standbys' containers and volumes behind.
compose_all=("${compose[@]}" --profile ha --profile tools)
work=$(mktemp -d "${TMPDIR:-/tmp}/quintet-e2e.XXXXXX")
writer=
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
    if [[ -n $writer ]]; then
        kill "$writer" 2>/dev/null || true
        wait "$writer" 2>/dev/null || true
    fi
    if ((rc != 0)); then
        say "--- cluster state at failure ---"
        t 30 "${compose_all[@]}" ps -a >&2 || true
        t 30 "${compose_all[@]}" logs --no-color --tail 40 >&2 || true
    fi
    if [[ ${E2E_KEEP:-0} == 1 ]]; then
        say "E2E_KEEP=1: leaving the cluster up; remove it with: ${compose_all[*]} down -v"
    elif [[ -n ${brought_up:-} ]]; then
        say "tearing down: docker compose --profile ha down -v"
        t 120 "${compose_all[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
            || { say "FAIL: docker compose down -v failed"; rc=1; }
    fi
    rm -rf "$work"
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
[[ -z $existing ]] || fail "containers of compose project 'quintet' already exist; this test would destroy them. Remove them first: ${compose_all[*]} down -v"
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
n=$(t 30 docker ps -q --filter label=com.docker.compose.project=quintet | wc -l)
((n == ${#services[@]})) || fail "$n containers run, expected the ${#services[@]} of the default profile"
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

# --- ha: two standby coordinators, a leader failover, a wiped standby -------
#
# Timing needs a client without a container start per request, so these
# steps use the image's own static /quintet, copied out to the host, on the
# published ports. Every write goes to a fresh key (PREFIX-N with value N),
# so after the faults each acknowledged one must read back with its value
# and each that surely failed must be absent.
[[ ${E2E_HA:-1} == 1 ]] || exit 0
ha_gap_max=${E2E_HA_MAX_GAP:-10}
ha_rejoin=${E2E_HA_REJOIN:-60}
hostq=$work/quintet
run_id="ha-$$-$RANDOM"

now_ms() { date +%s%3N; }

# quintet on the host, bounded; all arguments are quintet's.
q() { t 30 "$hostq" "$@"; }

# Answers one question about status (json, on stdin) or about a file of
# writes, printing the answer (see each mode below).
ha_py() { python3 "$work/ha.py" "$@"; }
cat >"$work/ha.py" <<'PY'
import json, sys
mode, args = sys.argv[1], sys.argv[2:]
if mode in ("roles", "leader", "rejoined"):
    s = json.loads(sys.stdin.read())
    rs = s.get("coordinators") or []
    leaders = [r for r in rs if r["role"] == "leader"]
    leader = leaders[0] if len(leaders) == 1 else None
    service = lambda r: r["address"].rsplit(":", 1)[0]
if mode == "roles":
    # "ok" once there are N replicas, one leader, the others reachable
    # followers (voters) with the leader's log; else what is seen.
    want = int(args[0])
    seen = ", ".join(f'{service(r)} {r["role"]}{"" if r["reachable"] else " unreachable"} at {r["applied"]}' for r in rs)
    good = (len(rs) == want and leader is not None and all(
        r is leader or (r["role"] == "follower" and r["reachable"] and r["applied"] >= leader["applied"])
        for r in rs))
    print("ok" if good else seen or "no coordinator replicas listed")
elif mode == "leader":
    # "SERVICE APPLIED" of the one leader, or nothing.
    if leader:
        print(service(leader), leader["applied"])
elif mode == "rejoined":
    # "ok" once SERVICE is a reachable follower with its log at least at INDEX.
    name, index = args[0], int(args[1])
    r = next((r for r in rs if service(r) == name), None)
    if r is None:
        print(f"{name} not listed")
    elif r["role"] == "follower" and r["reachable"] and r["applied"] >= index:
        print("ok")
    else:
        print(f'{name} {r["role"]}{"" if r["reachable"] else " unreachable"} at {r["applied"]} of {index}')
elif mode == "gap":
    # The writes of FILE ("<completion ms> <exit> <key>" lines) after MARK:
    # "<longest ms with no successful write> <ok> <failed> <unknown>"; the
    # stretch runs from MARK to the first success and between successes.
    rows = [l.split() for l in open(args[0]) if l.strip()]
    mark = int(args[1])
    after = [(int(ms), int(rc)) for ms, rc, _ in rows if int(ms) >= mark]
    oks = [ms for ms, rc in after if rc == 0]
    prev, gap = mark, 0
    for ms in oks:
        gap, prev = max(gap, ms - prev), ms
    if not oks:
        gap = -1
    count = lambda c: sum(1 for _, rc in after if rc == c)
    print(gap, len(oks), count(3), count(4))
elif mode == "readback":
    # FILE of writes and `quintet --output json run` answers to one get per
    # line of it: an acknowledged write must read back with its value, one
    # that surely failed (exit 3) must be absent. Prints the problems.
    rows = [l.split() for l in open(args[0]) if l.strip()]
    got = {}
    for l in sys.stdin:
        l = l.strip()
        if l.startswith("{"):
            a = json.loads(l)
            got[a["command"].split()[1]] = a
    bad = []
    for _, rc, key in rows:
        a = got.get(key)
        want = key.rsplit("-", 1)[1]
        if a is None:
            bad.append(f"{key}: not read")
        elif rc == "0" and a.get("result", {}).get("value") != want:
            bad.append(f"{key}: acknowledged, read back {a.get('result')}")
        elif rc == "3" and a.get("result", {}).get("found"):
            bad.append(f"{key}: failed, yet read back {a.get('result')}")
    print("\n".join(bad[:20]) if bad else "ok")
PY

# Polls status until `ha_py MODE ARGS` answers ok, at most SECS seconds:
# wait_for SECS WHAT MODE ARGS...; fails with WHAT and the last answer.
wait_for() {
    local secs=$1 what=$2 deadline last=''
    shift 2
    deadline=$(($(now_ms) + secs * 1000))
    while (($(now_ms) < deadline)); do
        last=$(q --timeout 2s --output json status 2>/dev/null | ha_py "$@" 2>&1) || true
        [[ $last == ok ]] && return 0
        sleep 0.3
    done
    fail "$what not within ${secs}s (last seen: ${last:-no status})"
}

# Sets `leader` (the compose service of the coordinator leader) and
# `index` (its log index) from status.
leader_now() {
    local out='' i
    for i in $(seq 1 50); do
        out=$(q --timeout 2s --output json status 2>/dev/null | ha_py leader) || true
        if [[ -n $out ]]; then
            read -r leader index <<<"$out"
            return 0
        fi
        sleep 0.2
    done
    fail "no coordinator leader in status within 10s"
}

# Sets gap (longest ms with no successful write after MARK, -1 if none
# succeeded) and the counts ok, failed, unknown for the writes in FILE.
measure_gap() {
    local out
    out=$(ha_py gap "$1" "$2" </dev/null) || fail "cannot read the writes in $1"
    read -r gap oks failed unknown <<<"$out"
    [[ $gap =~ ^-?[0-9]+$ ]] || fail "unexpected gap figures: $out"
}

# Sequential puts of PREFIX-1, PREFIX-2, ... (value N) for SECS seconds, one
# line per put appended to FILE: "<completion ms> <exit code> <key>".
write_loop() {
    local secs=$1 prefix=$2 file=$3 i=0 rc end
    end=$(($(now_ms) + secs * 1000))
    while (($(now_ms) < end)); do
        i=$((i + 1))
        rc=0
        t 10 "$hostq" --timeout 1s put "$prefix-$i" "$i" >/dev/null 2>>"$file.err" || rc=$?
        echo "$(now_ms) $rc $prefix-$i" >>"$file"
    done
}

# Waits for the background write loop; fails if it did not finish in time.
wait_writer() {
    local secs=$1 i
    for i in $(seq 1 $((secs * 10))); do
        kill -0 "$writer" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$writer" 2>/dev/null && fail "the write loop did not end within ${secs}s"
    wait "$writer" || true
    writer=
}

container() {
    local id
    id=$(t 30 "${compose_all[@]}" ps -aq "$1")
    [[ -n $id ]] || fail "service $1 has no container"
    echo "$id"
}

step="ha: a host client from the image"
cid=$(t 30 docker create "$image") || fail "docker create $image failed"
t 30 docker cp "$cid:/quintet" "$hostq" >/dev/null || { t 30 docker rm "$cid" >/dev/null; fail "cannot copy /quintet out of $image"; }
t 30 docker rm "$cid" >/dev/null || true
"$hostq" --version >/dev/null || fail "$hostq does not run on this host"
ok

step="ha: --profile ha up (the two standbys healthy within ${up_timeout}s)"
t $((up_timeout + 30)) "${compose_all[@]}" up -d --wait --wait-timeout "$up_timeout" \
    coordinator coordinator-2 coordinator-3 >&2 || fail "the standbys did not come up healthy"
for p in 7710 7720; do
    t 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null || fail "nothing answers on 127.0.0.1:$p"
done
ok

step="ha: the standbys joined as voters with the leader's log"
wait_for "$ha_rejoin" "three coordinator replicas, one leader and two followers at its index" roles 3
q status >&2 || true
ok

step="ha: writes go on while the coordinator leader's container is killed"
leader_now
old_leader=$leader
leader_id=$(container "$leader")
say "  leader is $leader"
: >"$work/kill"
write_loop 20 "$run_id-kill" "$work/kill" &
writer=$!
sleep 3
mark=$(now_ms)
t 30 docker kill "$leader_id" >/dev/null || fail "docker kill $leader failed"
wait_writer 40
measure_gap "$work/kill" "$mark"
say "  after the kill: $oks writes ok, $failed failed, $unknown unknown; longest stretch without a successful write ${gap} ms"
((gap >= 0)) || fail "no write succeeded after the leader was killed ($(tail -3 "$work/kill.err" | tr '\n' ' '))"
((gap <= ha_gap_max * 1000)) || fail "writes stopped for ${gap} ms (more than ${ha_gap_max}s)"
leader_now
[[ $leader != "$old_leader" ]] || fail "$old_leader still leads after its container was killed"
say "  new leader is $leader"
ok

step="ha: the killed leader starts again and rejoins as a follower"
start=$(now_ms)
t 30 docker start "$leader_id" >/dev/null || fail "docker start $old_leader failed"
wait_for "$ha_rejoin" "$old_leader rejoining" rejoined "$old_leader" "$index"
say "  $old_leader rejoined $(($(now_ms) - start)) ms after docker start"
ok

step="ha: a wiped standby rejoins from a snapshot"
leader_now
standby=coordinator-2
[[ $leader == coordinator-2 ]] && standby=coordinator-3
standby_id=$(container "$standby")
volume=$(t 30 docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' "$standby_id")
[[ -n $volume ]] || fail "$standby has no volume on /data"
: >"$work/wipe"
write_loop 15 "$run_id-wipe" "$work/wipe" &
writer=$!
sleep 2
mark=$(now_ms)
t 60 "${compose_all[@]}" stop --timeout 10 "$standby" >/dev/null 2>&1 || fail "stopping $standby failed"
t 60 "${compose_all[@]}" rm -f "$standby" >/dev/null 2>&1 || fail "removing $standby failed"
t 30 docker volume rm "$volume" >/dev/null || fail "removing volume $volume failed"
start=$(now_ms)
t $((up_timeout + 30)) "${compose_all[@]}" up -d --no-deps --wait --wait-timeout "$up_timeout" "$standby" >&2 \
    || fail "$standby did not come back healthy"
wait_for "$ha_rejoin" "the wiped $standby rejoining" rejoined "$standby" "$index"
say "  $standby rejoined $(($(now_ms) - start)) ms after its empty container was started"
# Captured first: `docker logs | grep -q` under pipefail fails when grep
# stops reading at the match and docker logs dies of SIGPIPE.
standby_log=$(t 30 docker logs "$(container "$standby")" 2>&1) || fail "docker logs $standby failed"
grep -q 'restored snapshot' <<<"$standby_log" \
    || fail "$standby rejoined but its log shows no snapshot restored"
wait_writer 40
measure_gap "$work/wipe" "$mark"
say "  during the wipe: $oks writes ok, $failed failed, $unknown unknown; longest stretch without a successful write ${gap} ms"
((gap >= 0 && gap <= ha_gap_max * 1000)) || fail "writes stopped for ${gap} ms while a standby was wiped"
ok

step="ha: every acknowledged write reads back, none that failed does"
cat "$work/kill" "$work/wipe" >"$work/writes"
bad=$(awk '{print "get " $3}' "$work/writes" \
    | t 120 "$hostq" --timeout 3s --output json run - --keep-going 2>/dev/null \
    | ha_py readback "$work/writes") || true
[[ $bad == ok ]] || fail "$(printf 'lost or phantom writes:\n%s' "$bad")"
say "  $(wc -l <"$work/writes") writes checked"
ok

step="ha: status: three coordinator replicas at one index, five replicas converged"
wait_for "$ha_rejoin" "the coordinator replicas at one log index" roles 3
json=$(q --output json status) || fail "quintet --output json status failed (exit $?)"
python3 - "$json" <<'PY' || fail "status does not show a converged cluster"
import json, sys
s = json.loads(sys.argv[1])
ps = s["participants"]
assert len(ps) == 5 and all(p["reachable"] for p in ps), "a replica is not reachable"
assert len({(p["applied"], p["digest"]) for p in ps}) == 1, "replicas differ in version or digest"
PY
q status >&2 || true
ok
