fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps `cargo build` working on a machine with only Rust installed;
    // an explicit PROTOC (e.g. Debian's protobuf-compiler) still wins.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // Data frames are handed between sockets without copying.
        .bytes(".burrow.tunnel.v1")
        .compile_protos(&["proto/burrow/tunnel/v1/tunnel.proto"], &["proto"])?;
    Ok(())
}
