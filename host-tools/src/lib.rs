//! Library half of `host-tools`: pieces the binary uses that are worth testing on their own.

pub mod flash;
pub mod qemu_count;
pub mod report;
pub mod train;

/// `1234567` → `1,234,567` (the benchmark table and the report page).
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
