//! The I420 frame every video component speaks.

use std::time::Instant;

use super::VideoError;

/// Largest width or height accepted anywhere (sources, decoder, sinks).
pub const MAX_DIMENSION: u32 = 4096;

/// Largest picture area accepted (4096 x 2304): bounds what an untrusted stream can make us
/// allocate.
pub const MAX_PIXELS: u64 = 4096 * 2304;

/// Luma of black in video range.
const BLACK_Y: u8 = 16;
/// Neutral chroma.
const NEUTRAL_UV: u8 = 128;

/// One 8-bit I420 picture: a full-size luma plane and two half-size chroma planes, each with
/// its stride, plus the time it was captured.
///
/// Width and height are always even and within [`MAX_DIMENSION`] / [`MAX_PIXELS`]. The planes
/// are owned and reused: resizing or copying into an existing frame only allocates when it
/// grows.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    width: u32,
    height: u32,
    strides: [usize; 3],
    planes: [Vec<u8>; 3],
    /// When the picture was captured (or made); the call derives RTP timestamps from it.
    pub capture: Instant,
}

/// Checks a size: even, non-zero, within the limits.
pub(crate) fn check_size(width: u64, height: u64) -> Result<(), VideoError> {
    let ok = width > 0
        && height > 0
        && width.is_multiple_of(2)
        && height.is_multiple_of(2)
        && width <= u64::from(MAX_DIMENSION)
        && height <= u64::from(MAX_DIMENSION)
        && width * height <= MAX_PIXELS;
    if ok {
        Ok(())
    } else {
        Err(VideoError::InvalidSize { width, height })
    }
}

/// Bytes a plane of `rows` rows of `width` pixels takes at `stride`.
fn plane_len(stride: usize, width: usize, rows: usize) -> usize {
    if rows == 0 {
        0
    } else {
        stride * (rows - 1) + width
    }
}

impl VideoFrame {
    /// A black frame of this size (tight strides).
    pub fn black(width: u32, height: u32) -> Result<Self, VideoError> {
        check_size(width.into(), height.into())?;
        let (w, h) = (width as usize, height as usize);
        Ok(Self {
            width,
            height,
            strides: [w, w / 2, w / 2],
            planes: [
                vec![BLACK_Y; w * h],
                vec![NEUTRAL_UV; w * h / 4],
                vec![NEUTRAL_UV; w * h / 4],
            ],
            capture: Instant::now(),
        })
    }

    /// A frame copied from three planes with their strides (`uv_stride` for both chroma
    /// planes). Fails if the size is invalid or a plane is too short.
    pub fn from_planes(
        width: u32,
        height: u32,
        y: &[u8],
        y_stride: usize,
        u: &[u8],
        v: &[u8],
        uv_stride: usize,
    ) -> Result<Self, VideoError> {
        let mut frame = Self::black(width, height)?;
        frame.copy_from_planes(width, height, [y, u, v], [y_stride, uv_stride, uv_stride])?;
        Ok(frame)
    }

    /// Width in pixels (even).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels (even).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// (width, height).
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Plane `i` (0 = Y, 1 = U, 2 = V); panics if `i > 2`.
    pub fn plane(&self, i: usize) -> &[u8] {
        &self.planes[i]
    }

    /// Plane `i` for writing (0 = Y, 1 = U, 2 = V); panics if `i > 2`.
    pub fn plane_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.planes[i]
    }

    /// All three planes for writing at once.
    pub fn planes_mut(&mut self) -> [&mut [u8]; 3] {
        let [y, u, v] = &mut self.planes;
        [y.as_mut_slice(), u.as_mut_slice(), v.as_mut_slice()]
    }

    /// Stride of plane `i` in bytes; panics if `i > 2`.
    pub fn stride(&self, i: usize) -> usize {
        self.strides[i]
    }

    /// The luma plane.
    pub fn y(&self) -> &[u8] {
        &self.planes[0]
    }

    /// The U (Cb) plane.
    pub fn u(&self) -> &[u8] {
        &self.planes[1]
    }

    /// The V (Cr) plane.
    pub fn v(&self) -> &[u8] {
        &self.planes[2]
    }

    /// Width and height of plane `i` in samples.
    pub fn plane_size(&self, i: usize) -> (usize, usize) {
        let (w, h) = (self.width as usize, self.height as usize);
        if i == 0 { (w, h) } else { (w / 2, h / 2) }
    }

    /// Row `row` of plane `i` (exactly the plane's width long); panics if either is out of
    /// range.
    pub fn row(&self, i: usize, row: usize) -> &[u8] {
        let (w, _) = self.plane_size(i);
        let start = row * self.strides[i];
        &self.planes[i][start..start + w]
    }

    /// Changes the size, reusing the buffers (tight strides); the picture's content is then
    /// unspecified. Allocates only when the frame grows.
    pub fn set_size(&mut self, width: u32, height: u32) -> Result<(), VideoError> {
        check_size(width.into(), height.into())?;
        if (width, height) == (self.width, self.height) {
            return Ok(());
        }
        let (w, h) = (width as usize, height as usize);
        self.width = width;
        self.height = height;
        self.strides = [w, w / 2, w / 2];
        self.planes[0].resize(w * h, BLACK_Y);
        self.planes[1].resize(w * h / 4, NEUTRAL_UV);
        self.planes[2].resize(w * h / 4, NEUTRAL_UV);
        Ok(())
    }

    /// Paints the whole frame black.
    pub fn fill_black(&mut self) {
        self.planes[0].fill(BLACK_Y);
        self.planes[1].fill(NEUTRAL_UV);
        self.planes[2].fill(NEUTRAL_UV);
    }

    /// Takes the size and picture of three planes with their strides, reusing this frame's
    /// buffers (the capture time is left alone).
    pub fn copy_from_planes(
        &mut self,
        width: u32,
        height: u32,
        planes: [&[u8]; 3],
        strides: [usize; 3],
    ) -> Result<(), VideoError> {
        check_size(width.into(), height.into())?;
        let (w, h) = (width as usize, height as usize);
        for (i, (src, &stride)) in planes.iter().zip(&strides).enumerate() {
            let (pw, ph) = if i == 0 { (w, h) } else { (w / 2, h / 2) };
            if stride < pw || src.len() < plane_len(stride, pw, ph) {
                return Err(VideoError::PlaneTooShort {
                    plane: i,
                    len: src.len(),
                    stride,
                    rows: ph,
                });
            }
        }
        self.set_size(width, height)?;
        for (i, (src, &stride)) in planes.iter().zip(&strides).enumerate() {
            let (pw, ph) = self.plane_size(i);
            let dst_stride = self.strides[i];
            let dst = &mut self.planes[i];
            if stride == pw && dst_stride == pw {
                dst[..pw * ph].copy_from_slice(&src[..pw * ph]);
            } else {
                for row in 0..ph {
                    dst[row * dst_stride..row * dst_stride + pw]
                        .copy_from_slice(&src[row * stride..row * stride + pw]);
                }
            }
        }
        Ok(())
    }

    /// Makes this frame a copy of `other` (picture and capture time), reusing the buffers.
    pub fn copy_from(&mut self, other: &VideoFrame) {
        self.width = other.width;
        self.height = other.height;
        self.strides = other.strides;
        for (dst, src) in self.planes.iter_mut().zip(&other.planes) {
            dst.clear();
            dst.extend_from_slice(src);
        }
        self.capture = other.capture;
    }

    /// Scales this picture into `dst` at `dst`'s current size (bilinear; at exactly half size
    /// this is a 2x2 box average). The capture time is copied.
    pub fn scale_into(&self, dst: &mut VideoFrame) {
        dst.capture = self.capture;
        if dst.size() == self.size() {
            dst.copy_from(self);
            return;
        }
        for i in 0..3 {
            let (sw, sh) = self.plane_size(i);
            let (dw, dh) = dst.plane_size(i);
            let (ss, ds) = (self.strides[i], dst.strides[i]);
            scale_plane(&self.planes[i], sw, sh, ss, &mut dst.planes[i], dw, dh, ds);
        }
    }

    /// Converts to 0RGB pixels (`0x00RRGGBB`, row by row, no padding) for display, BT.601
    /// video range. `out` is resized to width x height.
    pub fn to_xrgb(&self, out: &mut Vec<u32>) {
        let (w, h) = (self.width as usize, self.height as usize);
        out.resize(w * h, 0);
        for y in 0..h {
            let (ly, lu, lv) = (self.row(0, y), self.row(1, y / 2), self.row(2, y / 2));
            for (x, px) in out[y * w..(y + 1) * w].iter_mut().enumerate() {
                let c = 298 * (i32::from(ly[x]) - 16);
                let d = i32::from(lu[x / 2]) - 128;
                let e = i32::from(lv[x / 2]) - 128;
                let r = ((c + 409 * e + 128) >> 8).clamp(0, 255) as u32;
                let g = ((c - 100 * d - 208 * e + 128) >> 8).clamp(0, 255) as u32;
                let b = ((c + 516 * d + 128) >> 8).clamp(0, 255) as u32;
                *px = (r << 16) | (g << 8) | b;
            }
        }
    }

    /// A copy scaled to `width` x `height` (see [`VideoFrame::scale_into`]).
    pub fn scaled(&self, width: u32, height: u32) -> Result<VideoFrame, VideoError> {
        let mut out = VideoFrame::black(width, height)?;
        self.scale_into(&mut out);
        Ok(out)
    }
}

/// Source position of destination sample `d` in 16.16 fixed point, sample centres aligned.
fn src_pos(d: usize, src_len: usize, dst_len: usize) -> i64 {
    // (d + 0.5) * src / dst - 0.5, in 1/65536 units.
    ((2 * d as i64 + 1) * src_len as i64 * 65_536 / (2 * dst_len as i64)) - 32_768
}

/// Bilinear scaling of one plane.
#[allow(clippy::too_many_arguments)]
fn scale_plane(
    src: &[u8],
    sw: usize,
    sh: usize,
    ss: usize,
    dst: &mut [u8],
    dw: usize,
    dh: usize,
    ds: usize,
) {
    // Horizontal taps once per plane, not per row.
    let xs: Vec<(usize, usize, u32)> = (0..dw)
        .map(|x| {
            let p = src_pos(x, sw, dw).clamp(0, ((sw - 1) as i64) << 16);
            let x0 = (p >> 16) as usize;
            (x0, (x0 + 1).min(sw - 1), (p & 0xffff) as u32)
        })
        .collect();
    for y in 0..dh {
        let p = src_pos(y, sh, dh).clamp(0, ((sh - 1) as i64) << 16);
        let y0 = (p >> 16) as usize;
        let y1 = (y0 + 1).min(sh - 1);
        let fy = (p & 0xffff) as u32;
        let r0 = &src[y0 * ss..y0 * ss + sw];
        let r1 = &src[y1 * ss..y1 * ss + sw];
        let out = &mut dst[y * ds..y * ds + dw];
        for (o, &(x0, x1, fx)) in out.iter_mut().zip(&xs) {
            // Weights in 1/256 to keep the products in u32.
            let (fx, fy) = (fx >> 8, fy >> 8);
            let top = u32::from(r0[x0]) * (256 - fx) + u32::from(r0[x1]) * fx;
            let bottom = u32::from(r1[x0]) * (256 - fx) + u32::from(r1[x1]) * fx;
            *o = ((top * (256 - fy) + bottom * fy + (1 << 15)) >> 16) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(VideoFrame::black(640, 360).is_ok());
        for (w, h) in [
            (0, 2),
            (2, 0),
            (641, 360),
            (640, 361),
            (4098, 2),
            (4096, 4096),
        ] {
            assert!(
                matches!(VideoFrame::black(w, h), Err(VideoError::InvalidSize { .. })),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn from_planes_honours_strides_and_rejects_short_planes() {
        // 4x2 luma with stride 6 (2 bytes padding), chroma 2x1 with stride 3.
        let y = [1, 2, 3, 4, 99, 99, 5, 6, 7, 8];
        let u = [10, 11];
        let v = [20, 21];
        let f = VideoFrame::from_planes(4, 2, &y, 6, &u, &v, 3).unwrap();
        assert_eq!(f.y(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(f.u(), &[10, 11]);
        assert_eq!(f.v(), &[20, 21]);
        assert!(matches!(
            VideoFrame::from_planes(4, 2, &y[..9], 6, &u, &v, 3),
            Err(VideoError::PlaneTooShort { plane: 0, .. })
        ));
        assert!(matches!(
            VideoFrame::from_planes(4, 2, &y, 6, &u[..1], &v, 3),
            Err(VideoError::PlaneTooShort { plane: 1, .. })
        ));
    }

    #[test]
    fn xrgb_conversion_of_reference_colours() {
        let mut f = VideoFrame::black(4, 2).unwrap();
        // Left chroma column: white (235, 128, 128); right: pure red in BT.601 (81, 90, 240).
        f.plane_mut(0)
            .copy_from_slice(&[235, 235, 81, 81, 235, 235, 81, 81]);
        f.plane_mut(1).copy_from_slice(&[128, 90]);
        f.plane_mut(2).copy_from_slice(&[128, 240]);
        let mut px = Vec::new();
        f.to_xrgb(&mut px);
        assert_eq!(px.len(), 8);
        assert_eq!(px[0], 0x00ff_ffff);
        let (r, g, b) = (px[2] >> 16, (px[2] >> 8) & 0xff, px[2] & 0xff);
        assert!(r >= 250 && g <= 5 && b <= 5, "{r} {g} {b}");
        VideoFrame::black(2, 2).unwrap().to_xrgb(&mut px);
        assert_eq!(px, vec![0; 4]);
    }

    #[test]
    fn half_size_scaling_is_a_box_average() {
        let mut f = VideoFrame::black(4, 4).unwrap();
        f.plane_mut(0)
            .copy_from_slice(&[0, 100, 10, 10, 200, 100, 10, 10, 50, 50, 0, 0, 50, 50, 0, 4]);
        let s = f.scaled(2, 2).unwrap();
        assert_eq!(s.y(), &[100, 10, 50, 1]);
        assert_eq!(s.u(), &[128]);
    }

    #[test]
    fn scaling_up_and_odd_ratios_stay_in_range() {
        let mut f = VideoFrame::black(64, 36).unwrap();
        for (i, p) in f.plane_mut(0).iter_mut().enumerate() {
            *p = (i * 7 % 256) as u8;
        }
        for (w, h) in [(128, 72), (2, 2), (50, 30), (640, 360)] {
            let s = f.scaled(w, h).unwrap();
            assert_eq!(s.size(), (w, h));
            assert_eq!(s.y().len(), (w * h) as usize);
        }
        // A flat picture stays flat at any size.
        let flat = VideoFrame::black(64, 36).unwrap().scaled(50, 30).unwrap();
        assert!(flat.y().iter().all(|&p| p == 16));
    }
}
