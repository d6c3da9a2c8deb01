const PROTOS: &[&str] = &["kho/v1/data.proto", "kho/v1/admin.proto", "kho/v1/raft.proto", "kho/v1/load.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so that no system package is needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("kho_descriptor.bin"))
        .bytes(".kho.v1.RaftMessage.payload")
        .bytes(".kho.v1.SnapshotChunk.data")
        .compile_protos(PROTOS, &["."])?;
    // Each file (a directory's own change time does not change when a file in a directory
    // below it is added).
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
