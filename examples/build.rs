//! Generates the gRPC code of the greeter service the discovery example serves and calls
//! (pure Rust, no `protoc`). The library itself does not use it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/greeter.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
