use std::{env, error::Error, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/chat/v1/chat_service.proto",
    "proto/chat/v1/conversation_service.proto",
    "proto/chat/v1/resources.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // A protoc from crates.io, so that building needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        env::set_var("PROTOC", protoc);
        env::set_var("PROTOC_INCLUDE", &include);
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Both lists must share one path type.
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let includes = [PathBuf::from("proto"), include];
    tonic_prost_build::configure()
        // prost's codec with a small first send buffer per call (src/api/codec.rs).
        .codec_path("crate::api::codec::LeanCodec")
        .file_descriptor_set_path(out_dir.join("chat_v1_descriptor.bin"))
        .compile_protos(&protos, &includes)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
