#!/usr/bin/env bash
# The peers suite (issue 14's harness): Burrow next to rathole and bore, side by side in
# one run, every path in front of the same nginx, driven by wrk and curl. See the "Peers"
# section of BENCHMARKS.md.
#
# Usage:
#   bench/peers.sh [--quick] [--runs 3] [--duration 5] [--connections 1,8,32,64,128,256]
#                  [--download-bytes 1073741824] [--paths direct,burrow-grpc,...] [--out DIR]
#
# 1. Installs what is missing, only if absent: wrk, nginx, iperf3, redis-server,
#    fonts-dejavu-core and curl with apt-get (sudo when not root); rathole and bore
#    (bore-cli) with `cargo install --root` into a cached folder, bench/.tools by default
#    (gitignored), or BURROW_BENCH_TOOLS if set (a folder already holding bin/rathole and
#    bin/bore is used as it is).
# 2. Builds release burrow-host, burrow-agent and burrow-bench once.
# 3. Runs `burrow-bench --suite peers` with the arguments given; it starts every process,
#    measures, kills them, and writes bench/results/<date>-peers/ (raw.csv, summary.md,
#    PNG plots; <date>-peers-quick/ with --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "peers.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

tools="${BURROW_BENCH_TOOLS:-$PWD/bench/.tools}"
mkdir -p "$tools"
tools="$(cd "$tools" && pwd)"
# Not --locked: rathole does not build with it.
if [ ! -x "$tools/bin/rathole" ]; then
  echo "peers.sh: cargo install --root $tools rathole"
  cargo install --root "$tools" rathole
fi
if [ ! -x "$tools/bin/bore" ]; then
  echo "peers.sh: cargo install --root $tools bore-cli"
  cargo install --root "$tools" bore-cli
fi

cargo build --release -q -p burrow-host -p burrow-agent -p burrow-bench \
  --bin burrow-host --bin burrow-agent --bin burrow-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/burrow-bench" --suite peers --tools "$tools" \
  --host-bin "$target/release/burrow-host" --agent-bin "$target/release/burrow-agent" "$@"
