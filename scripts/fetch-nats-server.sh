#!/usr/bin/env bash
# Fetch Debian 13's (trixie) nats-server into the project, without touching the
# machine's apt configuration:
#
#   scripts/fetch-nats-server.sh <package-version> <dest-dir>
#
# e.g. scripts/fetch-nats-server.sh 2.10.27-1+b2 .deps/nats-server (what
# `make deps` runs) leaves the binary at .deps/nats-server/usr/sbin/nats-server.
#
# Does nothing if that binary is already there and reports the upstream version
# (the package version without its Debian revision). Otherwise:
#   1. a temporary apt state (lists, cache, sources, preferences) in a scratch
#      directory; its sources are the machine's own Debian entries (from
#      /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}) with
#      this release's codename replaced by trixie's (suites such as
#      <codename>-security or -updates are mapped the same way);
#   2. `apt-get update` + `apt-get download nats-server=<version>` with that
#      state: the indexes are checked against the keyrings the sources name
#      (Signed-By) or the machine's trusted keys, the .deb against the indexes;
#   3. `dpkg -x` into <dest-dir>, then `nats-server --version` must say so.
# Any failure is an error: nothing falls back to another nats-server.
set -euo pipefail

TARGET_CODENAME=trixie
PKG=nats-server

die() { echo "fetch-nats-server: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 <package-version> <dest-dir>"
version=$1
dest=$2
upstream=${version#*:}      # no epoch
upstream=${upstream%-*}     # 2.10.27-1+b2 -> 2.10.27
bin=$dest/usr/sbin/nats-server

if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "nats-server: v$upstream" ]; then
  exit 0
fi

. /etc/os-release
codename=${VERSION_CODENAME:-}
[ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
[ "${ID:-}" = debian ] || die "a Debian machine is needed (this is ${ID:-unknown})"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt downloads as _apt when run as root: it must reach the scratch directory.
chmod 755 "$tmp"
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/sources.list.d" "$tmp/preferences.d" "$tmp/download"
: >"$tmp/status"
: >"$tmp/sources.list"
if [ "$(id -u)" = 0 ] && getent passwd _apt >/dev/null; then chown _apt "$tmp/download"; fi

# The machine's Debian entries, codename changed. Classic one-line format:
#   deb [options] URI SUITE COMPONENT...
# Only lines whose suite is this release's (or <codename>-something) are kept.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  awk -v from="$codename" -v to="$TARGET_CODENAME" '
    /^[ \t]*deb[ \t]/ {
      n = split($0, w, /[ \t]+/); i = 1
      while (i <= n && w[i] == "") i++
      j = i + 1
      if (w[j] ~ /^\[/) { while (j <= n && w[j] !~ /\]$/) j++; j++ }
      # w[j] is the URI, w[j+1] the suite
      s = w[j + 1]
      if (s != from && index(s, from "-") != 1) next
      sub("^" from, to, s); w[j + 1] = s
      line = w[i]; for (k = i + 1; k <= n; k++) line = line " " w[k]
      print line
    }' "$f" >>"$tmp/sources.list"
done
# deb822 format: paragraphs of fields, continuation lines start with a blank.
# A paragraph is kept if it is enabled, has type deb and a suite of this
# release; its Suites keep only those, mapped, and Types only deb.
n=0
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  n=$((n + 1))
  awk -v from="$codename" -v to="$TARGET_CODENAME" '
    BEGIN { RS = ""; FS = "\n" }
    {
      out = ""; keep = 1; suites = ""; deb = 0; emit = 1
      for (i = 1; i <= NF; i++) {
        l = $i
        if (l ~ /^#/) continue
        if (l ~ /^[ \t]/) { if (emit) out = out l "\n"; continue }
        name = tolower(l); sub(/:.*/, "", name)
        val = l; sub(/^[^:]*:[ \t]*/, "", val)
        emit = 1
        if (name == "enabled" && tolower(val) ~ /^no/) keep = 0
        if (name == "types") {
          emit = 0
          if (val ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
          continue
        }
        if (name == "suites") {
          emit = 0
          m = split(val, w, /[ \t]+/)
          for (k = 1; k <= m; k++) {
            s = w[k]
            if (s != from && index(s, from "-") != 1) continue
            sub("^" from, to, s); suites = suites " " s
          }
          continue
        }
        out = out l "\n"
      }
      if (keep && deb && suites != "") printf "Types: deb\nSuites:%s\n%s\n", suites, out
    }' "$f" >"$tmp/sources.list.d/from-$n.sources"
done
if ! grep -qs "$TARGET_CODENAME" "$tmp/sources.list" "$tmp"/sources.list.d/*.sources; then
  die "no Debian '$codename' entry in the machine's apt sources to derive '$TARGET_CODENAME' from"
fi

apt=(
  -o "Dir::State=$tmp"
  -o "Dir::State::lists=$tmp/lists"
  -o "Dir::State::status=$tmp/status"
  -o "Dir::Cache=$tmp"
  -o "Dir::Cache::archives=$tmp/archives"
  -o "Dir::Etc::sourcelist=$tmp/sources.list"
  -o "Dir::Etc::sourceparts=$tmp/sources.list.d"
  -o "Dir::Etc::preferences=$tmp/preferences"
  -o "Dir::Etc::preferencesparts=$tmp/preferences.d"
  -o "APT::Get::List-Cleanup=false"
)

echo "fetch-nats-server: $PKG $version from Debian $TARGET_CODENAME (the machine's apt sources, codename changed)"
# apt-get update warns and exits 0 when an index cannot be fetched or verified: those are errors here.
if ! apt-get "${apt[@]}" -qq update >"$tmp/update.log" 2>&1 ||
  grep -Eq '^E:|^W:.*(Failed to fetch|GPG error|not signed|NO_PUBKEY|EXPKEYSIG)' "$tmp/update.log"; then
  cat "$tmp/update.log" >&2
  die "apt-get update of the $TARGET_CODENAME indexes failed (see above)"
fi
if ! (cd "$tmp/download" && apt-get "${apt[@]}" -q download "$PKG=$version") >"$tmp/download.log" 2>&1; then
  cat "$tmp/download.log" >&2
  avail=$(apt-cache "${apt[@]}" madison "$PKG" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | paste -sd' ')
  die "could not download $PKG=$version from $TARGET_CODENAME (available: ${avail:-none})"
fi
deb=$(ls "$tmp/download/"*.deb)

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
dpkg -x "$deb" "$dest.tmp"
got=$("$dest.tmp/usr/sbin/nats-server" --version 2>&1) || die "the extracted nats-server does not run: $got"
[ "$got" = "nats-server: v$upstream" ] || die "the extracted nats-server says '$got', not v$upstream"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "fetch-nats-server: $got at $bin"
