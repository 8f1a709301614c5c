#!/usr/bin/env bash
# Re-fetch the dashboard's vendored front-end files from the npm registry and check them.
# The files are committed under src/inferno/ui/static/vendor/; this script proves they are
# the published ones: the package tarball and every extracted file must match SHA256SUMS.
#   bash scripts/vendor-ui.sh          # fetch, verify, copy
#   bash scripts/vendor-ui.sh --check  # verify the committed files only
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/src/inferno/ui/static/vendor/uplot"
version=1.6.32
tarball_sha=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
if [ "${1:-}" != --check ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "uplot@$version" >/dev/null)
  echo "$tarball_sha  $tmp/uplot-$version.tgz" | sha256sum -c --quiet
  tar -xzf "$tmp/uplot-$version.tgz" -C "$tmp"
  cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" \
     "$tmp/package/LICENSE" "$dest/"
fi
(cd "$dest" && sha256sum -c --quiet SHA256SUMS)
echo "uPlot $version verified in $dest"
