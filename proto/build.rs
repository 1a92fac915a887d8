//! Generates the gRPC code with protox (a pure-Rust protobuf compiler), so that a fresh
//! machine needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/lauscha/storage.proto", "proto/lauscha/meta.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Shard data and Raft payloads are large: `Bytes` lets them pass without copies.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
