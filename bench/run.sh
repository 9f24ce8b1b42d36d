#!/usr/bin/env bash
# Runs Burrow's benchmarks in release mode and prints a markdown table of medians.
# Usage: bench/run.sh [--runs 5] [--requests 2000] [--bytes 268435456] [--transport grpc|ws]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p burrow-bench -- "$@"
