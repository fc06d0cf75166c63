//! Text for the report's plots: a drawing backend that wraps plotters' [`BitMapBackend`]
//! and draws text itself with `ab_glyph` and a font compiled into the binary.
//!
//! Why: plotters' bitmap backend draws text through its font feature. The `ttf` feature
//! (font-kit) asks fontconfig for system fonts, so a machine without fonts gets plots
//! without labels (or an error); the `ab_glyph` feature takes a registered font but places
//! each glyph without its left side bearing (plotters 0.3.7), so "clip" reads "dip". Here
//! every glyph is placed at its pen position plus bearing, with kerning, and blended by its
//! coverage. plotters' `ab_glyph` feature stays on, with the same font registered, because
//! plotters sizes legend boxes through it (the advance widths agree with ours).
//!
//! The font: Ubuntu Light from `epaint_default_fonts`, egui's font crate, which is
//! maintained with every egui release and ships the fonts as `include_bytes!` under their
//! licences (Ubuntu Font Licence 1.0) — nothing is looked up or fetched at run time.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::prelude::BitMapBackend;
use plotters::style::{register_font, FontStyle};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// The font's bytes.
const FONT_BYTES: &[u8] = epaint_default_fonts::UBUNTU_LIGHT;

/// Family name plots ask for.
pub const FAMILY: &str = "sans-serif";

/// The parsed font, once; also registers it with plotters (for its legend sizing).
pub fn font() -> Option<&'static FontRef<'static>> {
    static FONT: std::sync::OnceLock<Option<FontRef<'static>>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, FONT_BYTES).ok()?;
        FontRef::try_from_slice(FONT_BYTES).ok()
    })
    .as_ref()
}

/// [`BitMapBackend`] with its own text rendering (see the module doc).
pub struct Backend<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

impl<'a> Backend<'a> {
    /// Draws into `buf` (RGB, `w`×`h`).
    pub fn new(buf: &'a mut [u8], (w, h): (u32, u32), font: &'static FontRef<'static>) -> Self {
        Backend {
            inner: BitMapBackend::with_buffer(buf, (w, h)),
            font,
        }
    }

    /// Width and height of `text` at `size` pixels; the baseline is `ascent` below the top.
    fn layout(&self, text: &str, size: f64) -> (f32, f32) {
        let f = self.font.as_scaled(PxScale::from(size as f32));
        let mut w = 0.0;
        let mut prev = None;
        for c in text.chars() {
            let id = f.glyph_id(c);
            if let Some(p) = prev {
                w += f.kern(p, id);
            }
            w += f.h_advance(id);
            prev = Some(id);
        }
        (w, f.ascent() - f.descent())
    }
}

impl DrawingBackend for Backend<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = self.layout(text, style.size());
        Ok((w.ceil() as u32, h.ceil() as u32))
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let size = style.size();
        let (w, h) = self.layout(text, size);
        // Offset of the text box's top left corner from the anchor, before rotation.
        let dx = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -w / 2.0,
            HPos::Right => -w,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -h / 2.0,
            VPos::Bottom => -h,
        };
        let trans = style.transform();
        let f = self.font.as_scaled(PxScale::from(size as f32));
        let baseline = f.ascent();
        let mut pen = 0.0f32;
        let mut prev = None;
        let mut pixels = Vec::new();
        for c in text.chars() {
            let id = f.glyph_id(c);
            if let Some(p) = prev {
                pen += f.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(f.scale(), point(pen + dx, baseline + dy));
            pen += f.h_advance(id);
            if let Some(g) = self.font.outline_glyph(glyph) {
                let b = g.px_bounds();
                g.draw(|x, y, cov| {
                    if cov > 0.0 {
                        // Ubuntu Light is thin: a gamma below 1 darkens the antialiased
                        // edges so that small labels stay legible.
                        pixels.push((
                            b.min.x.floor() as i32 + x as i32,
                            b.min.y.floor() as i32 + y as i32,
                            cov.min(1.0).powf(0.6),
                        ));
                    }
                });
            }
        }
        for (x, y, cov) in pixels {
            let (x, y) = trans.transform(x, y);
            self.inner.draw_pixel(
                (pos.0 + x, pos.1 + y),
                BackendColor {
                    alpha: color.alpha * f64::from(cov),
                    rgb: color.rgb,
                },
            )?;
        }
        Ok(())
    }
}
