//! Rust core of pvrs. Plain Rust: every module is usable and tested without Python;
//! `py.rs` (behind the `python` feature) is the only file that knows PyO3.

pub mod aggregate;
pub mod error;
pub mod hashing;
pub mod header;
pub mod manifest;
pub mod parquet;
pub mod spans;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
