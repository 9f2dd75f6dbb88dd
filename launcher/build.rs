//! Generates the gRPC service from `proto/launcher.proto` with protox (a protobuf compiler in
//! Rust), so building the launcher needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/launcher.proto");
    let descriptors = protox::compile(["launcher.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
