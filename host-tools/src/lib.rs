//! Library half of `host-tools`: pieces the binary uses that are worth testing on their own.

pub mod flash;
pub mod qemu_count;
pub mod report;
