//! Compiles the .proto files with protox (pure Rust: no protoc needed) and
//! keeps the file descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "ecsmesh/v1/mesh.proto",
    "ecsmesh/v1/dtab_admin.proto",
    "ecsmesh/v1/policy_admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ecsmesh_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
