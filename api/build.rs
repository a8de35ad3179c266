//! Compiles the .proto files in pure Rust (protox), so no system `protoc` is needed.
fn main() -> anyhow::Result<()> {
    let files = [
        "proto/etcd/mvccpb/kv.proto",
        "proto/etcd/authpb/auth.proto",
        "proto/etcd/etcdserverpb/rpc.proto",
        "proto/etcd/v3lockpb/v3lock.proto",
        "proto/etcd/v3electionpb/v3election.proto",
        "proto/cairn/raft.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    if std::env::var_os("CARGO_FEATURE_JSON").is_some() {
        // serde impls for the gateway: proto field names, int64 as strings, bytes as
        // base64, zero values omitted, enums by name — grpc-gateway's `OrigName` JSON.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        pbjson_build::Builder::new()
            .register_descriptors(&prost::Message::encode_to_vec(&fds))?
            .out_dir(&out)
            .preserve_proto_field_names()
            .ignore_unknown_fields()
            .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])?;
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Server traits only with the `server` feature: SDK users do not compile them.
        .server_mod_attribute(".", r#"#[cfg(feature = "server")]"#)
        // RPCs that a later piece of work implements answer UNIMPLEMENTED until then.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
