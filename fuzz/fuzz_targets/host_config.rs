//! libFuzzer entry point; the body lives in burrow-fuzz-targets so the stable corpus
//! test (`cargo test fuzz_corpus`) runs exactly the same checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz_targets::host_config(data));
