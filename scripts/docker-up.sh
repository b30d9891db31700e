#!/usr/bin/env bash
# Makes a Docker engine answer on this machine: installs docker.io and debootstrap when missing and starts
# dockerd in the background when nothing answers. Safe to run again. Needs root (apt-get, dockerd).
set -euo pipefail

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
	echo "docker-up: installing docker.io and debootstrap from Debian"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if docker info >/dev/null 2>&1; then
	exit 0
fi

# A dockerd killed with its session leaves its pid file behind, and a new dockerd refuses to start over it.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
	if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
		echo "docker-up: removing stale $pidfile"
		rm -f "$pidfile"
	fi
done

echo "docker-up: starting dockerd (log: /var/log/synapse-pg-dockerd.log)"
nohup dockerd >/var/log/synapse-pg-dockerd.log 2>&1 &
# Bounded wait: 60 tries of one second.
for _ in $(seq 1 60); do
	if docker info >/dev/null 2>&1; then
		echo "docker-up: dockerd answers"
		exit 0
	fi
	sleep 1
done
echo "docker-up: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 /var/log/synapse-pg-dockerd.log >&2
exit 1
