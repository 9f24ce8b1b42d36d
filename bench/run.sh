#!/usr/bin/env bash
# Runs Burrow's benchmarks in release mode and prints markdown tables of medians.
# Usage:
#   bench/run.sh [--runs 5] [--requests 2000] [--bytes 268435456] [--calls 5000] [--transport grpc|ws]
#       tunnel vs direct latency and throughput, plugin call cost (the default suite)
#   bench/run.sh --suite cluster [--runs 5] [--requests 2000] [--wakeups 10] [--agents 10000]
#       forwarded vs local latency, wake-up delay, Redis registry cost; needs redis-server
#       and redis-cli on PATH (or BURROW_TEST_REDIS pointing at redis-server)
#   bench/run.sh --suite plugins [--runs 5] [--calls 5000] [--decisions 100000] [--tasks 2]
#                [--swaps 10] [--http-requests 4000] [--clients 8]
#       plugin call latency (fresh, warm) vs the same policy compiled natively, decision
#       throughput, hot-swap time with and without the artifact cache, HTTP requests/s
#   bench/run.sh --suite ssh [--runs 5] [--bytes 268435456] [--keystrokes 500] [--sessions 20]
#       Burrow's SSH path vs a local OpenSSH sshd: scp upload/download MiB/s, keystroke echo
#       p50/p99, new-session time (russh client and `ssh` process); needs root (it starts
#       /usr/sbin/sshd) and ssh, scp, ssh-keygen on PATH; per-run figures go to
#       bench/results/<date>-ssh/
#   bench/run.sh --suite lifecycle [--runs 5] [--workloads 100] [--items 100]
#       workload lifecycle through the control API, one host (state file) and two replicas
#       on Redis side by side: CreateWorkload → agent connected, EnqueueWork → the agent's
#       work hook started and → SUCCEEDED; needs redis-server and redis-cli on PATH and
#       bash 5; raw samples and a summary go to bench/results/<date>-lifecycle/
# The peers suite (Burrow vs rathole and bore, as release processes in front of nginx) has
# its own script, which installs its tools first: bench/peers.sh [--quick].
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p burrow-bench -- "$@"
