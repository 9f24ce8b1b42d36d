#!/usr/bin/env bash
# Runs Burrow's fuzz targets with cargo-fuzz (libFuzzer), one after another (the machine
# has two cores: one target at a time), for a fixed time each.
#
#   fuzz/run.sh                      every target, 60 s each
#   fuzz/run.sh 300                  every target, 300 s each
#   fuzz/run.sh 600 tunnel_frames    one target
#   fuzz/run.sh --merge [TARGET...]  fold what the runs found into fuzz/corpus/, minimized
#
# Installs what is missing: the nightly toolchain (FUZZ_TOOLCHAIN overrides it) and
# cargo-fuzz. The fuzzer reads the committed seeds in fuzz/corpus/<target>/ and writes
# what it finds to fuzz/work/<target>/ (ignored by git), so a run never bloats the
# repository; --merge adds to fuzz/corpus/ only the inputs that reach new code. A crash
# lands in fuzz/artifacts/<target>/: fix it, then keep the input as a regression seed in
# fuzz/corpus/<target>/ (`cargo test fuzz_corpus` replays the corpus on stable).
set -euo pipefail
cd "$(dirname "$0")"

toolchain=${FUZZ_TOOLCHAIN:-nightly}
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

merge=false
if [ "${1:-}" = "--merge" ]; then
  merge=true
  shift
fi
seconds=60
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(tunnel_frames agent_port_sniff ws_unwrap host_name agent_config host_config)
fi

# host_config reads the host's config, which pulls in the plugin runtime; its build script
# compiles the built-in plugins for wasm32-wasip2 with the same toolchain. A nightly
# without that target (rustup cannot always add it) builds host_config with stable and no
# sanitizer instead: cargo-fuzz's coverage flags are stable, only -Zsanitizer is not, and
# the config code is safe Rust (a panic or failed assertion is still caught).
has_wasm_target() {
  [ -d "$(rustup run "$1" rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ]
}

for target in "${targets[@]}"; do
  args=(+"$toolchain" fuzz)
  build_args=(-O)
  if [ "$target" = host_config ]; then
    build_args+=(--features host-config)
    if ! has_wasm_target "$toolchain"; then
      echo "== $target: $toolchain has no wasm32-wasip2 target; building it with stable, no sanitizer"
      rustup target add wasm32-wasip2 --toolchain stable >/dev/null 2>&1 || true
      args=(+stable fuzz)
      build_args+=(--sanitizer none)
    fi
  fi
  mkdir -p "work/$target" "corpus/$target"
  if $merge; then
    echo "== $target: merging fuzz/work/$target into fuzz/corpus/$target"
    cargo "${args[@]}" run "${build_args[@]}" "$target" "corpus/$target" "work/$target" -- -merge=1
    continue
  fi
  echo "== $target: ${seconds}s"
  # The scratch directory comes first: libFuzzer writes new inputs to the first one.
  cargo "${args[@]}" run "${build_args[@]}" "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
