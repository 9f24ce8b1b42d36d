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
        // Parked tunnels are idle streams: small initial buffers (src/codec.rs).
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_protos(&["proto/burrow/tunnel/v1/tunnel.proto"], &["proto"])?;
    // Own directory: generating it next to the tunnel code would overwrite that with an
    // empty module for the extern package.
    let cluster_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("cluster");
    std::fs::create_dir_all(&cluster_out)?;
    // The cluster API relays tunnel frames: reuse the tunnel types rather than generate copies.
    tonic_prost_build::configure()
        .extern_path(".burrow.tunnel.v1", "crate::pb")
        .codec_path("crate::codec::SmallBufferCodec")
        .out_dir(&cluster_out)
        .compile_protos(&["proto/burrow/cluster/v1/cluster.proto"], &["proto"])?;
    // The control API stands alone (no tunnel types); its own directory for the same reason.
    let control_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("control");
    std::fs::create_dir_all(&control_out)?;
    tonic_prost_build::configure()
        .out_dir(&control_out)
        .compile_protos(&["proto/burrow/control/v1/control.proto"], &["proto"])?;
    Ok(())
}
