#!/usr/bin/env bash
# Builds the test stand-ins for the official postgres image, synapse-pg-test/postgres:<major>, from Debian's own
# packages (no registry can be reached here): debootstrap of the release that ships that major, then docker import.
#   15 <- bookworm, 17 <- trixie, 18 <- forky
# and a real Synapse, synapse-pg-test/synapse, from Debian sid's matrix-synapse (images/synapse/start.py), and a
# Docker engine reached over SSH, synapse-pg-test/engine (images/engine/start.sh).
# Arguments: the majors and/or "synapse" to build (default: all). The Debian archive is the one this machine's
# apt uses (scripts/debian-mirror.sh).
# A built image carries a label with the hash of this script and the entrypoint; a second run with the same
# inputs does nothing. The root file systems are cached as tarballs in $CACHE so a rebuild skips debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SYNAPSE_PG_IMAGE_CACHE:-/var/cache/synapse-pg-test}
MIRROR=$(bash scripts/debian-mirror.sh)
TARGETS=${*:-15 17 18 synapse engine}
mkdir -p "$CACHE"

# The image label follows everything that shapes an image; the cached root file system only what goes into it.
inputs_hash=$(cat scripts/build-test-images.sh images/postgres/docker-entrypoint.sh | sha256sum | cut -c1-16)
ROOTFS_RECIPE=2
rootfs_hash=$( (echo "$ROOTFS_RECIPE"; cat images/postgres/docker-entrypoint.sh) | sha256sum | cut -c1-16)

release_of() {
	case "$1" in
		15) echo bookworm ;;
		17) echo trixie ;;
		18) echo forky ;;
		*) echo "build-test-images: no Debian release ships PostgreSQL $1 here (15, 17, 18)" >&2; return 1 ;;
	esac
}

# The official Debian image creates its postgres user as uid and gid 999 (Alpine's: 70); debootstrap takes the
# next free system id, which differs between releases (100 in trixie, 101 in forky). pg_upgrade reads the old
# data as the new image's user, so the stand-ins pin 999 like the official image, moving whatever held it.
pin_postgres_ids() {
	local root=$1 uid gid other
	uid=$(chroot "$root" id -u postgres)
	gid=$(chroot "$root" id -g postgres)
	other=$(chroot "$root" getent group 999 | cut -d: -f1 || true)
	if [ -n "$other" ] && [ "$other" != postgres ]; then chroot "$root" groupmod -g 990 "$other"; fi
	other=$(chroot "$root" getent passwd 999 | cut -d: -f1 || true)
	if [ -n "$other" ] && [ "$other" != postgres ]; then chroot "$root" usermod -u 990 "$other"; fi
	find "$root" -xdev -uid "$uid" -exec chown -h 999 {} +
	find "$root" -xdev -gid "$gid" -exec chgrp -h 999 {} +
	chroot "$root" groupmod -g 999 postgres
	chroot "$root" usermod -u 999 -g 999 postgres
}

# Whether the image was built from these inputs (its label holds their hash): then it is not built again.
is_current() {
	if [ "$(docker image inspect -f '{{ index .Config.Labels "synapse-pg-test.inputs" }}' "$1" 2>/dev/null)" = "$2" ]; then
		echo "build-test-images: $1 is up to date"
		return 0
	fi
	return 1
}

# debootstrap of a release with packages into a folder; the log is kept in the cache under the given name.
debootstrap_into() {
	local rootfs=$1 release=$2 packages=$3 log="$CACHE/debootstrap-$4.log" script
	# bookworm's debootstrap has no script for forky; sid's is the one that fits testing releases.
	script=/usr/share/debootstrap/scripts/$release
	[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
	debootstrap --variant=minbase --include="$packages" "$release" "$rootfs" "$MIRROR" "$script" >"$log" 2>&1 || {
		echo "build-test-images: debootstrap of $release failed; last lines of $log:" >&2
		tail -n 20 "$log" >&2
		return 1
	}
}

build_one() {
	local major=$1 release tag rootfs tarball
	release=$(release_of "$major")
	tag="synapse-pg-test/postgres:$major"
	is_current "$tag" "$inputs_hash" && return 0
	tarball="$CACHE/rootfs-$release-pg$major-$rootfs_hash.tar"
	if [ ! -s "$tarball" ]; then
		rootfs=$(mktemp -d "$CACHE/rootfs-$release.XXXX")
		echo "build-test-images: debootstrap $release with postgresql-$major (a few minutes)"
		debootstrap_into "$rootfs" "$release" "postgresql-$major,locales" "$release" || return 1
		# Debian's package creates a cluster of its own; the image's entrypoint creates clusters, so drop it.
		rm -rf "$rootfs/var/lib/postgresql/$major" "$rootfs/etc/postgresql/$major"
		# The official image listens on all addresses by default (it edits the sample the same way).
		sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$rootfs/usr/share/postgresql/$major/postgresql.conf.sample"
		chroot "$rootfs" localedef -i en_US -c -f UTF-8 en_US.UTF-8
		pin_postgres_ids "$rootfs"
		install -m 0755 images/postgres/docker-entrypoint.sh "$rootfs/usr/local/bin/docker-entrypoint.sh"
		rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
		tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
		rm -rf "$rootfs"
		# Root file systems of an earlier recipe are not used again.
		find "$CACHE" -maxdepth 1 -name "rootfs-$release-pg$major-*.tar" ! -name "${tarball##*/}" -delete
	fi
	local pgdata=/var/lib/postgresql/data volume=/var/lib/postgresql/data
	if [ "$major" -ge 18 ]; then
		# The official 18+ image keeps the data below a version folder and declares the parent as the volume.
		pgdata=/var/lib/postgresql/$major/docker
		volume=/var/lib/postgresql
	fi
	# docker import takes no STOPSIGNAL: the official image's SIGINT (fast shutdown) is set by whoever stops the
	# container (the program declares stopSignal, the step runner uses docker stop -s SIGINT).
	docker import \
		--change "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--change "ENV PG_MAJOR=$major" \
		--change "ENV PGDATA=$pgdata" \
		--change "ENV LANG=en_US.utf8" \
		--change "VOLUME $volume" \
		--change "EXPOSE 5432" \
		--change "LABEL synapse-pg-test.inputs=$inputs_hash" \
		--change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
		--change 'CMD ["postgres"]' \
		"$tarball" "$tag" >/dev/null
	echo "build-test-images: built $tag from $release"
}

# A debootstrap of <release> with <packages>, made once and cached as <tarball> (apt's caches left out).
cache_rootfs() {
	local tarball=$1 release=$2 packages=$3 label=$4 rootfs
	[ -s "$tarball" ] && return 0
	rootfs=$(mktemp -d "$CACHE/rootfs-$label.XXXX")
	echo "build-test-images: debootstrap $release with $packages (a few minutes)"
	debootstrap_into "$rootfs" "$release" "$packages" "$label" || return 1
	rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
	tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
	rm -rf "$rootfs"
}

# A copy of <tarball> with <script> as /usr/local/bin/<name>, since docker import has no COPY; prints its path.
with_entrypoint() {
	local tarball=$1 script=$2 name=$3 ctx
	ctx=$(mktemp -d)
	mkdir -p "$ctx/usr/local/bin"
	install -m 0755 "$script" "$ctx/usr/local/bin/$name"
	cp "$tarball" "$ctx.tar" && tar -C "$ctx" -rf "$ctx.tar" "./usr/local/bin/$name"
	rm -rf "$ctx"
	echo "$ctx.tar"
}

# A real Synapse: debootstrap does not resolve virtual packages, so python3-cffi-backend is named; psycopg2 is
# only a recommendation of the package. About 5 minutes and 430 MB fresh.
build_synapse() {
	local tag=synapse-pg-test/synapse hash tarball image
	hash=$(cat scripts/build-test-images.sh images/synapse/start.py | sha256sum | cut -c1-16)
	is_current "$tag" "$hash" && return 0
	tarball="$CACHE/rootfs-sid-synapse-1.tar"
	cache_rootfs "$tarball" sid matrix-synapse,python3-cffi-backend,python3-psycopg2 sid-synapse || return 1
	image=$(with_entrypoint "$tarball" images/synapse/start.py synapse-test-start)
	docker import \
		--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--change "ENV LANG=C.UTF-8" \
		--change "VOLUME /data" \
		--change "EXPOSE 8008" \
		--change "LABEL synapse-pg-test.inputs=$hash" \
		--change 'ENTRYPOINT ["/usr/local/bin/synapse-test-start"]' \
		"$image" "$tag" >/dev/null
	rm -f "$image"
	echo "build-test-images: built $tag from sid ($(synapse_version "$tarball"))"
}

# The "database host" of the remote-engine tests: Docker and an SSH server on bookworm, started with a volume for
# its /var/lib/docker (images/engine/start.sh). About 3 minutes and 300 MB fresh.
build_engine() {
	local tag=synapse-pg-test/engine hash tarball image
	hash=$(cat scripts/build-test-images.sh images/engine/start.sh | sha256sum | cut -c1-16)
	is_current "$tag" "$hash" && return 0
	tarball="$CACHE/rootfs-bookworm-engine-1.tar"
	cache_rootfs "$tarball" bookworm docker.io,openssh-server,iproute2,procps bookworm-engine || return 1
	image=$(with_entrypoint "$tarball" images/engine/start.sh engine-start)
	docker import \
		--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--change "VOLUME /var/lib/docker" \
		--change "EXPOSE 22" \
		--change "LABEL synapse-pg-test.inputs=$hash" \
		--change 'ENTRYPOINT ["/usr/local/bin/engine-start"]' \
		"$image" "$tag" >/dev/null
	rm -f "$image"
	echo "build-test-images: built $tag from bookworm"
}

synapse_version() {
	tar -xOf "$1" ./var/lib/dpkg/status | awk '/^Package: matrix-synapse$/ { found = 1 } found && /^Version:/ { print "matrix-synapse " $2; exit }'
}

pids=()
for target in $TARGETS; do
	case "$target" in
		synapse) build_synapse & ;;
		engine) build_engine & ;;
		*) build_one "$target" & ;;
	esac
	pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
	wait "$pid" || status=1
done
exit $status
