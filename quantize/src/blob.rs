//! The blob writer: lays sections out in the plan of `convmixer_edge::blob::section_at`
//! (the same plan the runtime's reader checks), 16-byte aligned, and seals the CRC.

use anyhow::{bail, Result};
use convmixer_edge::blob::{
    section_at, Header, SectionKind, CRC, CRC_RANGE, HEADER_LEN, SECTION_ALIGN, TOC_ENTRY_LEN,
};

/// Where lowered sections go, in plan order: the blob's [`Writer`] (which checks each one
/// against the plan), or a list ([`Sections`]) that one layer's lowering fills on a thread of
/// its own, pushed into the writer in layer order afterwards ([`Writer::extend`]).
pub trait Sink {
    /// Appends the next section.
    fn push(&mut self, kind: SectionKind, layer: usize, bytes: Vec<u8>) -> Result<()>;
}

/// Sections of one or more layers, in plan order, not yet checked against the plan.
pub type Sections = Vec<(SectionKind, usize, Vec<u8>)>;

impl Sink for Sections {
    fn push(&mut self, kind: SectionKind, layer: usize, bytes: Vec<u8>) -> Result<()> {
        Vec::push(self, (kind, layer, bytes));
        Ok(())
    }
}

impl Sink for Writer {
    fn push(&mut self, kind: SectionKind, layer: usize, bytes: Vec<u8>) -> Result<()> {
        Writer::push(self, kind, layer, bytes)
    }
}

/// Collects sections in canonical order and writes the blob.
pub struct Writer {
    header: Header,
    sections: Vec<(SectionKind, u16, Vec<u8>)>,
}

impl Writer {
    /// A writer for a blob with this header.
    pub fn new(header: Header) -> Self {
        Writer {
            header,
            sections: Vec::new(),
        }
    }

    /// Appends the next section; it must be the next one of the plan, with its length.
    pub fn push(&mut self, kind: SectionKind, layer: usize, bytes: Vec<u8>) -> Result<()> {
        let i = self.sections.len();
        let Some((want_kind, want_layer, want_len)) = section_at(&self.header, i) else {
            bail!("internal: section {i} ({kind:?}) is past the plan");
        };
        let layer = if want_layer == convmixer_edge::blob::GLOBAL_LAYER {
            want_layer
        } else {
            layer as u16
        };
        if want_kind != kind || want_layer != layer || want_len.is_some_and(|l| l != bytes.len()) {
            bail!(
                "internal: section {i} is {kind:?}/{layer} with {} bytes, the plan wants {want_kind:?}/{want_layer} with {want_len:?}",
                bytes.len()
            );
        }
        self.sections.push((kind, layer, bytes));
        Ok(())
    }

    /// [`Writer::push`]es each of `sections` in turn.
    pub fn extend(&mut self, sections: Sections) -> Result<()> {
        for (kind, layer, bytes) in sections {
            self.push(kind, layer, bytes)?;
        }
        Ok(())
    }

    /// Lays out the blob and computes its CRC.
    pub fn finish(self) -> Result<Vec<u8>> {
        let n = self.sections.len();
        if n != self.header.section_count() {
            bail!(
                "internal: {n} sections written, the plan has {}",
                self.header.section_count()
            );
        }
        let align = |x: usize| x.div_ceil(SECTION_ALIGN) * SECTION_ALIGN;
        let mut off = align(HEADER_LEN + n * TOC_ENTRY_LEN);
        let mut toc = Vec::with_capacity(n * TOC_ENTRY_LEN);
        let mut offsets = Vec::with_capacity(n);
        for (kind, layer, bytes) in &self.sections {
            toc.extend_from_slice(&(*kind as u16).to_le_bytes());
            toc.extend_from_slice(&layer.to_le_bytes());
            toc.extend_from_slice(&(off as u32).to_le_bytes());
            toc.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            toc.extend_from_slice(&0u32.to_le_bytes());
            offsets.push(off);
            off = align(off + bytes.len());
        }
        let total = offsets
            .last()
            .zip(self.sections.last())
            .map_or(off, |(o, s)| o + s.2.len());
        if u32::try_from(total).is_err() {
            bail!("model is too large for the blob format ({total} bytes)");
        }
        let mut out = vec![0u8; total];
        out[..HEADER_LEN].copy_from_slice(&self.header.encode(n as u16, total as u32));
        out[HEADER_LEN..HEADER_LEN + toc.len()].copy_from_slice(&toc);
        for ((_, _, bytes), o) in self.sections.iter().zip(offsets) {
            out[o..o + bytes.len()].copy_from_slice(bytes);
        }
        let mut d = CRC.digest();
        d.update(&out[..CRC_RANGE.start]);
        d.update(&out[CRC_RANGE.end..]);
        let crc = d.finalize();
        out[CRC_RANGE].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of i32 values.
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
