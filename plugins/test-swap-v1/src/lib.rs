//! Version 1 of the hot-swap test authorizer: allows every request. See `test-swap`.

burrow_plugin_sdk::export_authorizer!(test_swap::Swap<1>);
burrow_plugin_sdk::embed_manifest!("test-swap-v1.toml");
