//! Generates the gRPC and protobuf code from our `.proto` files with a vendored
//! `protoc`, so a fresh machine builds with no manual install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let files = [
        "proto/plugin/grpc_controller.proto",
        "proto/plugin/grpc_stdio.proto",
        "proto/plugin/grpc_broker.proto",
        "proto/plugins/shared/hclspec/hcl_spec.proto",
        "proto/plugins/shared/structs/proto/attribute.proto",
        "proto/plugins/shared/structs/proto/recoverable_error.proto",
        "proto/plugins/shared/structs/proto/stats.proto",
        "proto/plugins/base/proto/base.proto",
        "proto/plugins/drivers/proto/driver.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &files.map(std::path::PathBuf::from),
            &[std::path::PathBuf::from("proto"), include],
        )?;
    Ok(())
}
