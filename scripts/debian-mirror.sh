#!/usr/bin/env bash
# Prints the Debian archive this machine's apt uses (the URI of the entry for its own release, in deb822
# .sources files or one-line sources.list entries). The test images are debootstrapped from it, so no file of
# the repository names a mirror: the machine's apt configuration decides. DEBIAN_MIRROR overrides it.
set -euo pipefail

if [ -n "${DEBIAN_MIRROR:-}" ]; then
	echo "$DEBIAN_MIRROR"
	exit 0
fi

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || { echo "debian-mirror: /etc/os-release names no VERSION_CODENAME; set DEBIAN_MIRROR" >&2; exit 1; }

mirror=""
# deb822: a stanza's URIs and Suites; the entry whose suites include the release itself (not -security).
for f in /etc/apt/sources.list.d/*.sources; do
	[ -f "$f" ] || continue
	mirror=$(awk -v want="$codename" '
		function flush() { if (!done && uris != "" && found && types ~ /(^| )deb( |$)/) { print uris; done = 1; exit } uris = ""; found = 0; types = "" }
		/^[[:space:]]*$/ { flush(); next }
		/^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
		/^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); split($0, u, " "); uris = u[1] }
		/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) found = 1 }
		END { flush() }' "$f")
	[ -n "$mirror" ] && break
done
# One-line format: deb [options] URI suite components...
if [ -z "$mirror" ]; then
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		mirror=$(sed -E 's/\[[^]]*\]//' "$f" | awk -v want="$codename" '$1 == "deb" && $3 == want { print $2; exit }')
		[ -n "$mirror" ] && break
	done
fi
[ -n "$mirror" ] || { echo "debian-mirror: no apt source for $codename found in /etc/apt; set DEBIAN_MIRROR" >&2; exit 1; }
echo "$mirror"
