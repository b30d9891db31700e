#!/usr/bin/env bash
# The main job, set up and run: Pulumi's local file backend, the stack (STACK, default dev), the Docker network
# Synapse uses (when missing, on the stack's engine: docker:host), the database password as a Pulumi secret (asked
# once, or SYNAPSE_PG_PASSWORD), then `pulumi up`. Safe to run again: what exists is kept. Pulumi asks for
# PULUMI_CONFIG_PASSPHRASE to encrypt secrets.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v pulumi >/dev/null || { echo "first-run: the Pulumi CLI (3.x) is not installed; install it, then run this again." >&2; exit 1; }

pulumi whoami >/dev/null 2>&1 || pulumi login --local
pulumi stack select --create "${STACK:-dev}"

# The stack's engine (docker:host, the database host's over SSH) is where the network must be, not this machine's.
engine=$(pulumi config get docker:host 2>/dev/null || true)
[ -z "$engine" ] || export DOCKER_HOST=$engine
command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "first-run: no Docker engine answers${engine:+ at $engine}; start Docker (or check docker:host), then run this again." >&2; exit 1; }

network=$(pulumi config get postgres:network 2>/dev/null || echo synapse)
if ! docker network inspect "$network" >/dev/null 2>&1; then
	echo "first-run: creating the Docker network $network (postgres:network)"
	docker network create "$network" >/dev/null
fi

if ! pulumi config get postgres:password >/dev/null 2>&1; then
	password=${SYNAPSE_PG_PASSWORD:-}
	if [ -z "$password" ]; then
		read -r -s -p "The password Synapse uses for its database (homeserver.yaml): " password
		echo
	fi
	[ -n "$password" ] || { echo "first-run: no password given; nothing changed." >&2; exit 1; }
	# From stdin, so the password never appears in a process list.
	printf '%s' "$password" | pulumi config set --secret postgres:password
fi

pulumi up
