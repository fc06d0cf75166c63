//! Training checkpoints: everything `host-tools train --resume` needs to continue exactly
//! where a run stopped, in one file written atomically after every epoch.
//!
//! Layout (little-endian):
//!
//! | bytes | what |
//! | --- | --- |
//! | 8 | magic `CMXCKPT1` |
//! | 4 | header length `H` |
//! | H | header: JSON ([`Header`]: architecture, hyper-parameters, normalisation, classes, data fingerprint, epochs done, per-epoch history) |
//! | 8 | model record length `M` |
//! | M | the model's burn record (`NamedMpkBytesRecorder`, full precision) |
//! | 8 | optimiser record length `O` |
//! | O | the AdamW state's burn record (moments and step count) |
//! | 4 | CRC-32 (ISO-HDLC) of every byte before it |
//!
//! Only this module reads or writes the format. The RNG needs no state of its own: every
//! epoch's shuffle and augmentation draw from a generator seeded by `(seed, epoch)`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"CMXCKPT1";
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// One finished epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// Training accuracy (augmented images, model in training mode), 0..1.
    pub train_acc: f64,
    /// Validation accuracy, 0..1, when there is a validation set.
    pub val_acc: Option<f64>,
    /// Training images per second.
    pub images_per_s: f64,
    /// Wall time of the epoch's training steps, seconds.
    pub seconds: f64,
}

/// The checkpoint's JSON header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// `[in_c, in_h, in_w, dim, depth, kernel, patch, classes]`.
    pub arch: [usize; 8],
    /// `gelu`, `gelu-tanh` or `relu`.
    pub act: String,
    /// The run's hyper-parameters.
    pub hyper: super::Hyper,
    /// Per-channel normalisation mean (0..1 pixel scale).
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation.
    pub std: Vec<f32>,
    /// Class names.
    pub classes: Vec<String>,
    /// Images in the training set and CRC-32 of their pixels and labels (a resumed run
    /// must see the same data to continue the same run).
    pub data: (usize, u32),
    /// Epochs finished.
    pub epochs_done: usize,
    /// Figures of the finished epochs.
    pub history: Vec<EpochStats>,
}

/// A checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The header.
    pub header: Header,
    /// The model's burn record.
    pub model: Vec<u8>,
    /// The optimiser's burn record.
    pub optim: Vec<u8>,
}

impl Checkpoint {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let h = serde_json::to_vec(&self.header)?;
        let mut out = Vec::with_capacity(32 + h.len() + self.model.len() + self.optim.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(h.len())?.to_le_bytes());
        out.extend_from_slice(&h);
        for part in [&self.model, &self.optim] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&CRC.checksum(&out).to_le_bytes());
        Ok(out)
    }

    /// Parses a checkpoint file's bytes; `what` names it in errors.
    pub fn from_bytes(b: &[u8], what: &str) -> Result<Checkpoint> {
        if b.len() < 8 || &b[..8] != MAGIC {
            bail!("{what}: not a host-tools training checkpoint (bad magic)");
        }
        if b.len() < 8 + 4 + 8 + 8 + 4 {
            bail!("{what}: truncated checkpoint ({} bytes)", b.len());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if CRC.checksum(body) != stored {
            bail!("{what}: checkpoint CRC mismatch (the file is damaged or truncated)");
        }
        let mut at: usize = 8;
        let mut take = |len: usize| -> Result<&[u8]> {
            let end = at
                .checked_add(len)
                .filter(|&e| e <= body.len())
                .with_context(|| format!("{what}: checkpoint section runs past the end"))?;
            let s = &body[at..end];
            at = end;
            Ok(s)
        };
        let hlen = u32::from_le_bytes(take(4)?.try_into()?) as usize;
        let header: Header = serde_json::from_slice(take(hlen)?)
            .with_context(|| format!("{what}: bad checkpoint header"))?;
        let mlen = usize::try_from(u64::from_le_bytes(take(8)?.try_into()?))?;
        let model = take(mlen)?.to_vec();
        let olen = usize::try_from(u64::from_le_bytes(take(8)?.try_into()?))?;
        let optim = take(olen)?.to_vec();
        if at != body.len() {
            bail!(
                "{what}: {} unexpected bytes after the checkpoint's sections",
                body.len() - at
            );
        }
        Ok(Checkpoint {
            header,
            model,
            optim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            header: Header {
                arch: [1, 28, 28, 16, 2, 5, 2, 10],
                act: "gelu".into(),
                hyper: super::super::Hyper::default(),
                mean: vec![0.13],
                std: vec![0.31],
                classes: (0..10).map(|i| i.to_string()).collect(),
                data: (100, 0xdead_beef),
                epochs_done: 3,
                history: vec![],
            },
            model: vec![1, 2, 3],
            optim: vec![4, 5],
        }
    }

    #[test]
    fn round_trips_and_every_bit_flip_is_caught() {
        let c = sample();
        let b = c.to_bytes().unwrap();
        assert_eq!(Checkpoint::from_bytes(&b, "x").unwrap(), c);
        for bit in 0..b.len() * 8 {
            let mut d = b.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Checkpoint::from_bytes(&d, "x").is_err(),
                "flip of bit {bit} accepted"
            );
        }
        for len in 0..b.len() {
            assert!(
                Checkpoint::from_bytes(&b[..len], "x").is_err(),
                "truncation to {len} accepted"
            );
        }
    }
}
