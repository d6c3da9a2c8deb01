fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so that no system package is needed (as in kho's proto/build.rs).
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // The benchmark's etcd client: a minimal copy of etcd's KV service. The server side is
    // generated too, for the in-process fake etcd of the tests.
    tonic_prost_build::configure().compile_protos(&["proto/etcd/rpc.proto"], &["proto/etcd"])?;
    println!("cargo:rerun-if-changed=proto/etcd");
    Ok(())
}
