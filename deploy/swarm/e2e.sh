#!/usr/bin/env bash
# Docker Swarm end-to-end test of deploy/swarm/stack.yaml on this machine's
# engine: makes it a one-node swarm (unless it is one already), labels the
# node for all eight services, deploys the stack, waits (bounded) until every
# service runs a task whose node is ready (`quintet health` inside it) and
# `quintet status` shows three coordinator replicas with one leader and five
# converged participants, writes and reads at different replicas through the
# published ports (127.0.0.1:17701..17705), then kills a participant's
# container and the coordinator leader's container in turn and checks that
# writes and reads go on and that swarm restarts the task. It ALWAYS removes
# the stack, its volumes and network and the labels it added, and leaves the
# swarm only if it created it (trap; also on failure or Ctrl-C). Exits
# non-zero with an "e2e-swarm: FAIL:" line on any failure. Works from any cwd.
#
# Environment:
#   QUINTET_IMAGE=name:tag  image to run (default quintet:latest); built with
#                           deploy/build.sh when missing or older than
#                           coordinator replication
#   QUINTET_BUILD=1         build the image even if it is present
#   QUINTET_CLI=path        the quintet client to use (default: the one
#                           build.sh made, else target/release, target/debug)
#   E2E_STACK=quintet-e2e   stack name (not `quintet`, so a real deployment
#                           of the stack is never touched)
#   E2E_UP_TIMEOUT=180      seconds to wait for all eight to be ready
#   E2E_SKIP_LEADER_KILL=1  skip the coordinator-leader step
#   E2E_KEEP=1              leave the stack running for a look
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stack=${E2E_STACK:-quintet-e2e}
image=${QUINTET_IMAGE:-quintet:latest}
export QUINTET_IMAGE=$image             # stack.yaml reads it
up_timeout=${E2E_UP_TIMEOUT:-180}
stack_file=$root/deploy/swarm/stack.yaml
coordinators=(coordinator-1 coordinator-2 coordinator-3)
participants=(participant-1 participant-2 participant-3 participant-4 participant-5)
services=("${coordinators[@]}" "${participants[@]}")
endpoints=127.0.0.1:17701,127.0.0.1:17702,127.0.0.1:17703,127.0.0.1:17704,127.0.0.1:17705
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac

passed=0
step=setup
started_ms=$(date +%s%3N)
# Set as things are created, so cleanup undoes exactly those.
we_init_swarm=
gwbridge_existed=
deployed=
added_labels=()

say() { echo "e2e-swarm: $*" >&2; }
fail() {
    say "FAIL: $step: $*"
    exit 1
}
ok() {
    passed=$((passed + 1))
    say "ok: $step${1:+ ($1)}"
}
ms_since() { echo $(($(date +%s%3N) - $1)); }
# Runs a command with a time limit: t SECONDS CMD...
t() {
    local secs=$1
    shift
    timeout --kill-after=10 "$secs" "$@"
}
# Polls CMD every 0.25 s until it succeeds or SECONDS have passed:
# wait_until SECONDS CMD... (returns 1 on timeout).
wait_until() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.25
    done
}

# Everything of the stack that can be left behind, one name per line.
volumes=()
for s in "${services[@]}"; do volumes+=("${stack}_data-$s"); done
network=${stack}_cluster
leftovers() {
    local v
    t 30 docker ps -aq --filter "label=com.docker.stack.namespace=$stack" || true
    t 30 docker volume ls -q --filter "label=com.docker.stack.namespace=$stack" || true
    for v in "${volumes[@]}"; do
        t 30 docker volume inspect "$v" >/dev/null 2>&1 && echo "$v"
    done
    t 30 docker network inspect "$network" >/dev/null 2>&1 && echo "$network"
    return 0
}
no_containers() { [[ -z $(t 30 docker ps -aq --filter "label=com.docker.stack.namespace=$stack") ]]; }
no_network() { ! t 30 docker network inspect "$network" >/dev/null 2>&1; }
rm_gwbridge() { t 30 docker network rm docker_gwbridge >/dev/null 2>&1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/quintet-swarm-e2e.XXXXXX")

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    rm -rf "$tmp"
    if ((rc != 0)) && [[ -n $deployed ]]; then
        say "--- stack state at failure ---"
        t 30 docker stack ps --no-trunc "$stack" >&2 || true
        for s in "${services[@]}"; do
            say "--- logs of ${stack}_$s (last 15 lines) ---"
            t 30 docker service logs --no-task-ids --tail 15 "${stack}_$s" >&2 || true
        done
    fi
    if [[ ${E2E_KEEP:-0} == 1 && -n $deployed ]]; then
        say "E2E_KEEP=1: leaving stack $stack up; remove it with: docker stack rm $stack," \
            "then its volumes (docker volume ls --filter label=com.docker.stack.namespace=$stack)" \
            "${we_init_swarm:+and docker swarm leave --force}"
    else
        if [[ -n $deployed ]]; then
            say "removing stack $stack, its volumes and network"
            t 120 docker stack rm "$stack" >/dev/null 2>&1 || { say "FAIL: docker stack rm failed"; rc=1; }
            # The volumes stay in use until swarm has removed the containers.
            wait_until 120 no_containers || { say "FAIL: containers of $stack still exist after 120 s"; rc=1; }
            local v
            for v in $( (t 30 docker volume ls -q --filter "label=com.docker.stack.namespace=$stack"
                printf '%s\n' "${volumes[@]}") | sort -u); do
                t 30 docker volume inspect "$v" >/dev/null 2>&1 || continue
                t 60 docker volume rm "$v" >/dev/null || { say "FAIL: cannot remove volume $v"; rc=1; }
            done
            wait_until 60 no_network || { say "FAIL: network of $stack still exists after 60 s"; rc=1; }
        fi
        if [[ -n $we_init_swarm ]]; then
            say "leaving the swarm this test created"
            t 120 docker swarm leave --force >/dev/null || { say "FAIL: docker swarm leave failed"; rc=1; }
            # swarm init made docker_gwbridge; leave keeps it. Removing it
            # can fail for a moment while the daemon drops the ingress
            # sandbox; a daemon that keeps a stale endpoint on it refuses
            # for good (a Docker bug, gone after a daemon restart): only warn.
            if [[ -z $gwbridge_existed ]] \
                && ! wait_until 15 rm_gwbridge; then
                say "warning: could not remove network docker_gwbridge: $(t 30 docker network rm docker_gwbridge 2>&1 | head -n1)"
            fi
        elif ((${#added_labels[@]} > 0)); then
            local args=() l
            for l in "${added_labels[@]}"; do args+=(--label-rm "$l"); done
            t 60 docker node update "${args[@]}" "$node" >/dev/null \
                || { say "FAIL: cannot remove node labels ${added_labels[*]}"; rc=1; }
        fi
        if [[ -n $deployed ]]; then
            local left
            left=$(leftovers | sort -u)
            [[ -z $left ]] || { say "FAIL: left behind: $(tr '\n' ' ' <<<"$left")"; rc=1; }
        fi
    fi
    local secs=$(($(ms_since "$started_ms") / 1000))
    if ((rc == 0)); then
        say "PASS: $passed passed, 0 failed (${secs}s)"
    else
        say "$passed passed, 1 failed (${secs}s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'say "FAIL: $step: interrupted"; exit 130' INT
trap 'say "FAIL: $step: terminated"; exit 143' TERM

step="docker reachable"
command -v docker >/dev/null || fail "docker is not installed"
t 30 docker info >/dev/null 2>&1 || fail "cannot talk to the Docker daemon"
t 30 docker stack --help >/dev/null 2>&1 || fail "this docker CLI has no 'docker stack'"
ok

step="image present"
# Built when missing, or when it predates coordinator replication (a
# coordinator without --coordinators cannot run this stack).
supports_replicas() {
    local help
    help=$(t 60 docker run --rm --network none "$image" /quintet-coordinator --help 2>/dev/null) || return 1
    grep -q -- --coordinators <<<"$help"
}
if [[ ${QUINTET_BUILD:-0} == 1 ]] || ! t 30 docker image inspect "$image" >/dev/null 2>&1 || ! supports_replicas; then
    say "building $image with deploy/build.sh"
    t 2400 "$root/deploy/build.sh" >&2 || fail "deploy/build.sh failed"
    supports_replicas || fail "$image has no coordinator replication (--coordinators)"
fi
ok

step="client binary"
cli=${QUINTET_CLI:-}
if [[ -z $cli ]]; then
    for c in "$target_dir/x86_64-unknown-linux-gnu/release/quintet" "$target_dir/release/quintet" "$target_dir/debug/quintet"; do
        if [[ -x $c ]]; then cli=$c; break; fi
    done
fi
[[ -n $cli && -x $cli ]] || fail "no quintet client in $target_dir (run deploy/build.sh or cargo build --bins) and QUINTET_CLI is unset"
say "  using $cli"
ok
# The quintet CLI at the stack's published ports; all arguments are quintet's.
q() { t 30 "$cli" --endpoints "$endpoints" --timeout 5s "$@"; }

step="swarm"
state=$(t 30 docker info -f '{{.Swarm.LocalNodeState}}')
case $state in
inactive)
    t 30 docker network inspect docker_gwbridge >/dev/null 2>&1 && gwbridge_existed=1
    # The advertise address only matters for other nodes; a one-node swarm
    # on loopback needs no network interface.
    t 60 docker swarm init --advertise-addr 127.0.0.1 >/dev/null || fail "docker swarm init failed"
    we_init_swarm=1
    say "  initialized a one-node swarm (left again at the end)"
    ;;
active)
    [[ $(t 30 docker info -f '{{.Swarm.ControlAvailable}}') == true ]] \
        || fail "this engine is a swarm worker; run the test on a manager"
    nodes=$(t 30 docker node ls -q | wc -l)
    ((nodes == 1)) || fail "the swarm has $nodes nodes; this test kills containers locally and needs a one-node swarm (or none)"
    say "  using the existing one-node swarm"
    ;;
*) fail "swarm state is '$state'; expected inactive or active" ;;
esac
ok

step="no stack $stack already"
if t 30 docker stack ls --format '{{.Name}}' | grep -x "$stack" >/dev/null; then
    fail "stack $stack exists; this test would destroy it. Remove it first: docker stack rm $stack"
fi
left=$(leftovers | sort -u)
[[ -z $left ]] || fail "leftovers of an earlier $stack exist (remove them first): $(tr '\n' ' ' <<<"$left")"
ok

step="label this node for all eight services"
node=$(t 30 docker info -f '{{.Swarm.NodeID}}')
# shellcheck disable=SC2016 # a Go template, not a shell expansion
labels=$(t 30 docker node inspect -f '{{range $k, $v := .Spec.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$node")
args=()
for s in "${services[@]}"; do
    l=quintet.$s
    current=$(sed -n "s/^${l//./\\.}=//p" <<<"$labels")
    if [[ -z $current ]]; then
        args+=(--label-add "$l=true")
        added_labels+=("$l")
    elif [[ $current != true ]]; then
        fail "this node has label $l=$current; expected true or none"
    fi
done
if ((${#args[@]} > 0)); then
    t 60 docker node update "${args[@]}" "$node" >/dev/null || fail "docker node update failed"
fi
ok "${#added_labels[@]} added"

step="deploy"
deployed=1
t 120 docker stack deploy --resolve-image never -c "$stack_file" "$stack" >&2 || fail "docker stack deploy failed"
ok

port_of() {
    case $1 in
    coordinator-*) echo 7700 ;;
    participant-*) echo "770${1#participant-}" ;;
    esac
}
# The id of the service's running container whose node is ready, as
# `quintet health` run inside it says ("" if none). The stack has no swarm
# healthcheck (see stack.yaml for why), so this is the health check.
ready_container() {
    local c
    c=$(t 30 docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1" --filter status=running | head -n1)
    if [[ -n $c ]] && t 15 docker exec "$c" /quintet health --addr "127.0.0.1:$(port_of "$1")" >/dev/null 2>&1; then
        echo "$c"
    fi
}
all_ready() {
    local s
    for s in "${services[@]}"; do
        [[ -n $(ready_container "$s") ]] || return 1
    done
}
# Checks a `quintet --output json status`: five participants reachable, all
# members of the view, at one version and digest; three coordinator replicas
# reachable with one leader.
# Prints the leader's id. converged [JSON]
converged() {
    local json
    json=$(q --output json status 2>/dev/null) || return 1
    python3 - "$json" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
ps = s["participants"]
assert len(ps) == 5 and all(p["reachable"] for p in ps)
assert len({p["applied"] for p in ps}) == 1 and len({p["digest"] for p in ps}) == 1
assert all(p["current"] for p in ps)
cs = s["coordinators"]
assert len(cs) == 3 and all(c["reachable"] for c in cs), cs
assert [c["role"] for c in cs].count("leader") == 1
assert s["coordinator"]["reachable"] and s["coordinator"]["leader"]
assert len(s["coordinator"]["view"]["members"]) == 5
print(s["coordinator"]["leader"]["id"])
PY
}
converged_quietly() { converged >/dev/null 2>&1; }

step="all eight running and ready (quintet health) within ${up_timeout}s"
t0=$(date +%s%3N)
wait_until "$up_timeout" all_ready || fail "not all eight ready: $(t 30 docker service ls --filter "label=com.docker.stack.namespace=$stack" --format '{{.Name}}={{.Replicas}}' | tr '\n' ' ')"
ok "$(ms_since "$t0") ms"

step="status: 3 coordinators with a leader, 5 converged replicas"
t0=$(date +%s%3N)
wait_until 60 converged_quietly || { q status >&2 || true; fail "the cluster did not converge within 60 s"; }
q status >&2
ok "$(ms_since "$t0") ms"

# Writes KEY=VALUE at replica AT, retrying for up to SECONDS while the
# outcome is "surely not applied" (exit 3); on "unknown" (exit 4) it reads
# the key back before trying again. put_until SECONDS KEY VALUE AT
put_until() {
    local deadline=$(($(date +%s) + $1)) key=$2 value=$3 at=$4 rc
    while :; do
        rc=0
        q put "$key" "$value" --at "$at" >/dev/null 2>"$tmp/err" || rc=$?
        ((rc == 0)) && return 0
        if ((rc == 4)) && [[ $(q get "$key" 2>/dev/null) == "$value" ]]; then
            return 0
        fi
        ((rc == 3 || rc == 4)) || { cat "$tmp/err" >&2; return 1; }
        (($(date +%s) < deadline)) || { cat "$tmp/err" >&2; return 1; }
        sleep 0.25
    done
}
# Reads KEY at replica AT (or, with no AT, at whichever replica can answer
# a linearizable read) and compares with VALUE: expect_get KEY VALUE [AT]
expect_get() {
    local got at=()
    [[ -z ${3:-} ]] || at=(--at "$3")
    got=$(q get "$1" "${at[@]}") || fail "quintet get $1 ${at[*]} failed (exit $?)"
    [[ $got == "$2" ]] || fail "get $1 ${at[*]} returned '$got', expected '$2'"
}
value="hello-$$-$RANDOM"
step="put at replica 1 (published port 17701)"
q put greeting "$value" --at 1 >&2 || fail "quintet put failed (exit $?)"
ok
for r in 3 5; do
    step="get at replica $r"
    expect_get greeting "$value" "$r"
    ok
done

# Kills the task container of SERVICE; swarm is to run
# a new, ready one: kill_task SERVICE sets $killed, then wait_until with
# restarted SERVICE.
kill_task() {
    killed=$(ready_container "$1")
    [[ -n $killed ]] || fail "$1 has no ready container"
    t 30 docker kill "$killed" >/dev/null || fail "docker kill $killed failed"
    killed_at=$(date +%s%3N)
    say "  killed ${stack}_$1 (container ${killed:0:12})"
}
restarted() {
    local c
    c=$(ready_container "$1")
    [[ -n $c && $c != "$killed" ]]
}

step="kill participant-3's container; writes and reads go on"
kill_task participant-3
t0=$killed_at
after_kill="v-$RANDOM"
put_until 30 after-kill "$after_kill" 1 || fail "no write succeeded within 30 s of the kill"
write_ms=$(ms_since "$t0")
# Right after a fault a replica may refuse linearizable reads for a moment
# (its lease ran out, or it was dropped and catches up); the client then
# reads at another one. Reads at one given replica wait for convergence.
expect_get after-kill "$after_kill"
expect_get greeting "$value"
ok "first write ${write_ms} ms after the kill"

step="swarm restarts participant-3; it catches up"
wait_until 120 restarted participant-3 || fail "no new ready participant-3 task within 120 s"
restart_ms=$(ms_since "$killed_at")
wait_until 60 converged_quietly || { q status >&2 || true; fail "participant-3 did not rejoin within 60 s"; }
expect_get after-kill "$after_kill" 3
expect_get after-kill "$after_kill" 4
ok "ready again ${restart_ms} ms after the kill, converged after $(ms_since "$killed_at") ms"

if [[ ${E2E_SKIP_LEADER_KILL:-0} != 1 ]]; then
    step="kill the coordinator leader's container; writes go on"
    leader=$(converged) || fail "no converged status to find the leader in"
    [[ $leader =~ ^[123]$ ]] || fail "leader id '$leader' is not 1, 2 or 3"
    kill_task "coordinator-$leader"
    t0=$killed_at
    after_failover="v-$RANDOM"
    put_until 30 after-failover "$after_failover" 2 || fail "no write succeeded within 30 s of killing the leader"
    write_ms=$(ms_since "$t0")
    expect_get after-failover "$after_failover"
    expect_get after-kill "$after_kill"
    ok "coordinator-$leader killed, first write ${write_ms} ms later"

    step="swarm restarts coordinator-$leader; three replicas again"
    wait_until 120 restarted "coordinator-$leader" || fail "no new ready coordinator-$leader task within 120 s"
    restart_ms=$(ms_since "$killed_at")
    wait_until 60 converged_quietly || { q status >&2 || true; fail "the coordinators did not converge within 60 s"; }
    new_leader=$(converged) || fail "status changed under us"
    expect_get after-failover "$after_failover" 1
    expect_get after-failover "$after_failover" 5
    put_until 30 after-rejoin "v-$RANDOM" 3 || fail "no write after coordinator-$leader rejoined"
    ok "ready again ${restart_ms} ms after the kill; leader now coordinator-$new_leader"
fi

step="final status"
q status >&2 || fail "quintet status failed (exit $?)"
ok
