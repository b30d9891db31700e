#!/bin/bash
# Test stand-in for the official postgres image's docker-entrypoint.sh.
#
# It honours the parts of that image's contract synapse-postgres relies on, and nothing more:
# - POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
#   POSTGRES_DB (default POSTGRES_USER), POSTGRES_INITDB_ARGS, PGDATA;
# - initdb only when PGDATA holds no PG_VERSION, so a restart on existing data never re-initialises it;
# - local and 127.0.0.1 connections trusted (initdb's default), and
#   `host all all all scram-sha-256` appended, as the official image does from PostgreSQL 14;
# - the server runs as the `postgres` user (PostgreSQL refuses root), started as root to fix ownership first.
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chmod 00700 "$PGDATA" || :
	chown postgres:postgres /var/run/postgresql
	chmod 03775 /var/run/postgresql
	# Like the official image: only chown what is not ours yet, so a large data folder is not rewalked.
	find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
	# The 18+ layout keeps PGDATA below the volume (/var/lib/postgresql/18/docker): own the parents too.
	chown postgres:postgres "$(dirname "$PGDATA")"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ "$1" = 'postgres' ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_USER:=postgres}"
	: "${POSTGRES_DB:=$POSTGRES_USER}"
	: "${POSTGRES_INITDB_ARGS:=}"
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
		echo >&2 'error: database is uninitialized and superuser password is not specified (POSTGRES_PASSWORD).'
		exit 1
	fi
	# The password goes through a pipe, never argv, exactly like the official image.
	eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"$POSTGRES_INITDB_ARGS"' -D "$PGDATA"'
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
	if [ "$POSTGRES_DB" != 'postgres' ]; then
		psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --dbname postgres \
			--set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
	fi
	pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
	echo 'PostgreSQL init process complete; ready for start up.'
fi

exec "$@"
