//! Version 2 of the hot-swap test authorizer: denies every request with a reason naming
//! v2. See `test-swap`.

burrow_plugin_sdk::export_authorizer!(test_swap::Swap<2>);
burrow_plugin_sdk::embed_manifest!("test-swap-v2.toml");
