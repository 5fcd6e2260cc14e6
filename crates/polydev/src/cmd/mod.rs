//! One module per subcommand.

pub mod apikey;
pub mod bench;
pub mod bench_api;
pub mod bench_egress;
pub mod bench_pages;
pub mod bench_runs;
pub mod common;
pub mod doctor;
pub mod image;
pub mod serve;
pub mod soak;
pub mod user;
pub mod vault;
pub mod vm;
