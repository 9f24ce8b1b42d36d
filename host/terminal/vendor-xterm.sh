#!/usr/bin/env bash
# Vendors xterm.js for the web terminal page from the npm registry, pinned by version and
# checked against the registry's published integrity (sha512), so every file under
# assets/vendor/ can be traced to a package tarball. Re-run to upgrade: change the
# versions below, run it, review the diff, run `cargo test terminal`.
#
# Usage: host/terminal/vendor-xterm.sh      (needs npm and node)
set -euo pipefail

XTERM_VERSION=6.0.0
FIT_VERSION=0.11.0

cd "$(dirname "$0")"
out=assets/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() { # package version -> unpacked dir
  local package=$1 version=$2
  local integrity tarball
  integrity=$(npm view "$package@$version" dist.integrity)
  tarball=$(cd "$work" && npm pack --silent "$package@$version")
  # npm pack checks the tarball against the registry's integrity; check again here so
  # a tampered cache cannot slip through, and record what was checked.
  local actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  if [[ "$actual" != "$integrity" ]]; then
    echo "integrity mismatch for $package@$version: registry $integrity, tarball $actual" >&2
    exit 1
  fi
  mkdir -p "$work/$package"
  tar -xzf "$work/$tarball" -C "$work/$package"
  echo "$package@$version $integrity" >> "$work/provenance"
}

fetch @xterm/xterm "$XTERM_VERSION"
fetch @xterm/addon-fit "$FIT_VERSION"

rm -rf "$out" && mkdir -p "$out"
cp "$work/@xterm/xterm/package/lib/xterm.js" "$out/xterm.js"
cp "$work/@xterm/xterm/package/css/xterm.css" "$out/xterm.css"
cp "$work/@xterm/xterm/package/LICENSE" "$out/LICENSE-xterm"
cp "$work/@xterm/addon-fit/package/lib/addon-fit.js" "$out/addon-fit.js"
cp "$work/@xterm/addon-fit/package/LICENSE" "$out/LICENSE-addon-fit" 2>/dev/null \
  || cp "$work/@xterm/xterm/package/LICENSE" "$out/LICENSE-addon-fit"
{
  echo "# Written by host/terminal/vendor-xterm.sh; do not edit by hand."
  echo "# package@version, the registry's dist.integrity it was checked against, then each file's sha256."
  cat "$work/provenance"
  (cd "$out" && sha256sum xterm.js xterm.css addon-fit.js)
} > "$out/PROVENANCE"
echo "vendored into $out:" && ls -l "$out"
