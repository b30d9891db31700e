#!/bin/sh
# The entrypoint of synapse-pg-test/engine: a Docker engine on a file system of its own, reached over SSH, the
# "database host" of the remote-engine tests. The key allowed to log in as root comes in AUTHORIZED_KEY.
set -eu
: "${AUTHORIZED_KEY:?the public key allowed to log in}"
mkdir -p /root/.ssh /run/sshd
printf '%s\n' "$AUTHORIZED_KEY" >/root/.ssh/authorized_keys
chmod 700 /root/.ssh
chmod 600 /root/.ssh/authorized_keys
ssh-keygen -A >/dev/null
/usr/sbin/sshd -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password
# /var/lib/docker is a volume of the outer engine, so overlay2 works on it. No iptables rules: the clusters talk on
# a bridge of their own and publish ports through docker-proxy, which needs none.
exec dockerd --host unix:///var/run/docker.sock --storage-driver overlay2 --iptables=false --ip-masq=false
