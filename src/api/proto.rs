//! The generated `chat.v1` types. They stay in `api`: nothing below it sees them.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("chat.v1");

/// Descriptors of the `chat.v1` files, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_v1_descriptor");
