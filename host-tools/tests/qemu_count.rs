//! The instruction counter of `host-tools bench` on a small synthetic qemu log
//! (`qemu-aarch64 -d in_asm,exec,nochain` format, as qemu 7.2 writes it).

use host_tools::qemu_count::{count_log, parse_plugin_output, Block, Counter, Counts};

/// Two blocks: `_start` (3 instructions, run once) and a 2-instruction loop run 4 times,
/// retranslated once with 3 instructions and run twice more; a guest stderr line and an
/// execution of a block never translated in between.
const LOG: &str = "\
----------------
IN: _start
0x0000005500001000:  d503201f  nop
0x0000005500001004:  d280001d  movz     x29, #0
0x0000005500001008:  94000002  bl       #0x5500001010

Trace 0: 0x7f0000000100 [0000000000001001/0000005500001000/00000001/00000200] _start
----------------
IN: loop
0x0000005500001010:  f1000400  subs     x0, x0, #1
0x0000005500001014:  54ffffe1  b.ne     #0x5500001010

Trace 0: 0x7f0000000200 [0000000000001001/0000005500001010/00000001/00000200] loop
Trace 0: 0x7f0000000200 [0000000000001001/0000005500001010/00000001/00000200] loop
error: some guest message
Trace 0: 0x7f0000000200 [0000000000001001/0000005500001010/00000001/00000200] loop
Trace 0: 0x7f0000000200 [0000000000001001/0000005500001010/00000001/00000200] loop
Trace 0: 0x7f0000000300 [0000000000001001/0000005500002000/00000001/00000200] elsewhere
----------------
IN: loop
0x0000005500001010:  f1000400  subs     x0, x0, #1
0x0000005500001014:  f1000400  subs     x0, x0, #1
0x0000005500001018:  54ffffc1  b.ne     #0x5500001010

Trace 0: 0x7f0000000400 [0000000000001001/0000005500001010/00000001/00000200] loop
Trace 0: 0x7f0000000400 [0000000000001001/0000005500001010/00000001/00000200] loop
";

#[test]
fn counts_a_synthetic_log_exactly() {
    assert_eq!(
        count_log(LOG.as_bytes()),
        Counts {
            instructions: 3 + 4 * 2 + 2 * 3,
            blocks_executed: 1 + 4 + 1 + 2,
            blocks_translated: 3,
            unknown_executions: 1,
        }
    );
}

#[test]
fn streaming_reader_agrees_and_keeps_the_profile() {
    /// Hands out at most 7 bytes per read: lines split across reads must not matter.
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let mut c = Counter::new();
    c.read(Trickle(LOG.as_bytes())).unwrap();
    let counts = c.finish();
    assert_eq!(counts, count_log(LOG.as_bytes()));
    assert_eq!(c.start_pc(), Some(0x55_0000_1000));
    assert_eq!(c.other_lines(), ["error: some guest message"]);
    assert_eq!(
        c.blocks(),
        [
            Block {
                pc: 0x55_0000_1000,
                size: 3,
                execs: 1
            },
            Block {
                pc: 0x55_0000_1010,
                size: 3,
                execs: 6
            },
        ]
    );
}

#[test]
fn a_log_without_trailing_blank_line_closes_its_last_block() {
    let log = "IN: f\n0x10:  d503201f  nop\n0x14:  d503201f  nop";
    let c = count_log(log.as_bytes());
    assert_eq!((c.blocks_translated, c.instructions), (1, 0));
    let log = "IN: f\n0x10:  d503201f  nop\n\nTrace 0: 0x1 [0/0000000000000010/0/0] f\r\n";
    assert_eq!(count_log(log.as_bytes()).instructions, 1);
}

#[test]
fn reads_the_plugin_output() {
    let text = "start 5500001000\nblock 5500001000 3 1\nblock 5500001010 2 4\nmark 96 7\nblock 5500001010 3 2\nmark 98 12\n";
    let (counts, blocks, entry, marks) = parse_plugin_output(text).unwrap();
    assert_eq!(marks, [(96, 7), (98, 12)]);
    assert_eq!(entry, Some(0x55_0000_1000));
    assert_eq!(
        counts,
        Counts {
            instructions: 3 + 4 * 2 + 2 * 3,
            blocks_executed: 7,
            blocks_translated: 3,
            unknown_executions: 0,
        }
    );
    assert_eq!(blocks.len(), 3);
    assert!(parse_plugin_output("block 12 x 1").is_err());
}
