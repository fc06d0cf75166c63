//! Disjoint mutable parts of one token-major activation tensor, for layers split over
//! cores: token ranges are plain `chunks_mut`; a channel range of every token (what a
//! depthwise layer splits by) is a [`ChannelsMut`].
//!
//! Safety argument: a `ChannelsMut` holds the tensor's pointer and the channel range
//! `lo..hi`; it is made only from an exclusive borrow `&'a mut [T]` of the whole tensor,
//! and [`ChannelsMut::split`] gives each view a range that no other view of the same
//! split has. Code holding a view touches only elements `t · dim + c` with `c` in its
//! range (the safe accessor [`ChannelsMut::token`] returns exactly those; the SIMD kernels
//! that take `ChannelsMut::as_mut_ptr` state it in their `SAFETY` comments), so no two
//! views ever access the same element, and none outlives the borrow (`PhantomData<&'a mut
//! [T]>`). A view is therefore `Send` like the `&mut [T]` it came from.

use core::marker::PhantomData;
use core::ops::Range;
use core::ptr::NonNull;

use crate::cores::MAX_PARTS;

/// Channels `lo..hi` of every token of a `tokens · dim` tensor, mutable.
///
/// ```
/// use convmixer_edge::kernels::parts::ChannelsMut;
/// let mut a = [0u8; 3 * 4]; // 3 tokens × 4 channels
/// let mut views = ChannelsMut::split(&mut a, 4, 2, 2); // channels 0..2 and 2..4
/// for (i, v) in views.iter_mut().enumerate() {
///     for t in 0..3 {
///         v.token(t).unwrap().fill(i as u8 + 1);
///     }
/// }
/// drop(views);
/// assert_eq!(a, [1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2]);
/// ```
#[derive(Debug)]
pub struct ChannelsMut<'a, T> {
    ptr: NonNull<T>,
    len: usize,
    dim: usize,
    lo: usize,
    hi: usize,
    _own: PhantomData<&'a mut [T]>,
}

// SAFETY: see the module header: a view is an exclusive borrow of its elements, like the
// `&'a mut [T]` it was split from, which is Send where T is.
unsafe impl<T: Send> Send for ChannelsMut<'_, T> {}

impl<'a, T> ChannelsMut<'a, T> {
    /// Every channel of `a` (`dim` per token).
    ///
    /// ```
    /// let mut a = [0i8; 8];
    /// let v = convmixer_edge::kernels::parts::ChannelsMut::whole(&mut a, 4);
    /// assert_eq!((v.channels(), v.len()), (0..4, 8));
    /// ```
    pub fn whole(a: &'a mut [T], dim: usize) -> Self {
        ChannelsMut {
            ptr: NonNull::from(&mut *a).cast(),
            len: a.len(),
            dim,
            lo: 0,
            hi: dim,
            _own: PhantomData,
        }
    }

    /// `a`'s channels in `parts` (at most [`MAX_PARTS`]) consecutive ranges of whole
    /// `unit`s (the last range takes the remainder below a unit), as even as the units
    /// allow; empty ranges are left out.
    ///
    /// ```
    /// let mut a = [0i8; 2 * 48];
    /// let v = convmixer_edge::kernels::parts::ChannelsMut::split(&mut a, 48, 16, 2);
    /// let r: Vec<_> = v.iter().map(|v| v.channels()).collect();
    /// assert_eq!(r, [0..32, 32..48]);
    /// ```
    pub fn split(
        a: &'a mut [T],
        dim: usize,
        unit: usize,
        parts: usize,
    ) -> heapless::Vec<Self, MAX_PARTS> {
        let whole = Self::whole(a, dim);
        let unit = unit.max(1);
        let mut out = heapless::Vec::new();
        for r in crate::cores::bounds(dim.div_ceil(unit), parts.min(MAX_PARTS)) {
            let (lo, hi) = ((r.start * unit).min(dim), (r.end * unit).min(dim));
            if lo < hi {
                // Cannot fail: at most MAX_PARTS ranges.
                let _ = out.push(ChannelsMut {
                    lo,
                    hi,
                    _own: PhantomData,
                    ..whole
                });
            }
        }
        out
    }

    /// The view's channels.
    ///
    /// ```
    /// let mut a = [0i8; 4];
    /// assert_eq!(convmixer_edge::kernels::parts::ChannelsMut::whole(&mut a, 2).channels(), 0..2);
    /// ```
    pub fn channels(&self) -> Range<usize> {
        self.lo..self.hi
    }

    /// Channels per token of the whole tensor.
    ///
    /// ```
    /// let mut a = [0i8; 4];
    /// assert_eq!(convmixer_edge::kernels::parts::ChannelsMut::whole(&mut a, 2).dim(), 2);
    /// ```
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Elements of the whole tensor.
    ///
    /// ```
    /// let mut a = [0i8; 4];
    /// assert_eq!(convmixer_edge::kernels::parts::ChannelsMut::whole(&mut a, 2).len(), 4);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the whole tensor is empty.
    ///
    /// ```
    /// let mut a = [0i8; 0];
    /// assert!(convmixer_edge::kernels::parts::ChannelsMut::whole(&mut a, 2).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The view's channels of token `t`, or `None` past the tensor's end.
    ///
    /// ```
    /// let mut a = [0i8, 1, 2, 3, 4, 5];
    /// let mut v = convmixer_edge::kernels::parts::ChannelsMut::split(&mut a, 3, 1, 3).pop().unwrap();
    /// assert_eq!(v.token(1).unwrap(), &mut [5]);
    /// assert!(v.token(2).is_none());
    /// ```
    pub fn token(&mut self, t: usize) -> Option<&mut [T]> {
        let start = t.checked_mul(self.dim)?.checked_add(self.lo)?;
        let end = start.checked_add(self.hi - self.lo)?;
        if end > self.len {
            return None;
        }
        // SAFETY: start..end lies inside the tensor (end ≤ len) and holds only this view's
        // channels of token t, which no other view has (module header); the borrow of self
        // keeps this the only live reference to them.
        Some(unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), end - start) })
    }

    /// The view's channels of token `t`, read-only (several at once), or `None` past the
    /// tensor's end.
    ///
    /// ```
    /// let mut a = [0i8, 1, 2, 3, 4, 5];
    /// let v = convmixer_edge::kernels::parts::ChannelsMut::split(&mut a, 3, 2, 2).pop().unwrap();
    /// assert_eq!((v.get(0).unwrap(), v.get(1).unwrap()), (&[2][..], &[5][..]));
    /// assert!(v.get(2).is_none());
    /// ```
    pub fn get(&self, t: usize) -> Option<&[T]> {
        let start = t.checked_mul(self.dim)?.checked_add(self.lo)?;
        let end = start.checked_add(self.hi - self.lo)?;
        if end > self.len {
            return None;
        }
        // SAFETY: start..end lies inside the tensor and holds only this view's channels
        // of token t (module header); the shared borrow of self keeps any `token` slice
        // (the only way to write them) from being alive at the same time.
        Some(unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start) })
    }

    /// The whole tensor's first element, for SIMD kernels: through it only the view's
    /// channels of each token may be read or written (the module header's contract).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr()
    }
}
