//! A moving test pattern with the frame number as a barcode.

use std::time::Instant;

use super::frame::check_size;
use super::{VideoError, VideoFrame, VideoSource, write_code};

/// A synthetic camera: scrolling luma bars with fine texture over a vertical gradient, a
/// checkered box moving on a Lissajous path, a band of coarse texture scrolling the other way,
/// drifting chroma, a little grain that changes every frame (as a sensor's would), and the
/// frame number ([`super::write_code`]) along the top edge. Enough motion and texture to be a fair
/// codec test; never ends; not live (the call paces it).
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
    fps: u32,
    frame: u64,
}

impl TestPattern {
    /// A pattern of this size and nominal frame rate.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, VideoError> {
        check_size(width.into(), height.into())?;
        if fps == 0 || fps > 240 {
            return Err(VideoError::InvalidConfig(format!(
                "frame rate {fps} (need 1..=240)"
            )));
        }
        Ok(Self {
            width,
            height,
            fps,
            frame: 0,
        })
    }

    /// The number of the next picture (its barcode is this modulo 65536).
    pub fn next_number(&self) -> u64 {
        self.frame
    }

    /// Draws picture number `n` into `out` (resized to the pattern's size).
    pub fn draw(&self, n: u64, out: &mut VideoFrame) -> Result<(), VideoError> {
        out.set_size(self.width, self.height)?;
        let (w, h) = (self.width as usize, self.height as usize);
        let strides = [out.stride(0), out.stride(1), out.stride(2)];
        let t = n as usize;
        let bar_w = (w / 8).max(1);
        let (bw, bh) = ((w / 5).max(2), (h / 4).max(2));
        let phase = n as f64;
        let bx = ((w - bw) as f64 / 2.0 * (1.0 + (phase * 0.05).sin())) as usize;
        let by = ((h - bh) as f64 / 2.0 * (1.0 + (phase * 0.037).cos())) as usize;
        let noise_top = h - h / 6;
        let [py, pu, pv] = out.planes_mut();
        for y in 0..h {
            let row = &mut py[y * strides[0]..y * strides[0] + w];
            let grad = y * 40 / h;
            for (x, p) in row.iter_mut().enumerate() {
                let in_box = x >= bx && x < bx + bw && y >= by && y < by + bh;
                // Sensor-like noise, new every frame: what makes real cameras cost bits.
                let grain = (hash(x, y, t) % 3) as i32 - 1;
                let value = if in_box {
                    if ((x - bx) / 8 + (y - by) / 8).is_multiple_of(2) {
                        60
                    } else {
                        200
                    }
                } else if y >= noise_top {
                    // Coarse texture scrolling left, 3 pixels a frame.
                    96 + (hash((x + 3 * t) / 2, y / 2, 0) % 64) as i32
                } else {
                    // Bars and fine texture scrolling left, 2 pixels a frame.
                    let texture = (hash(x + 2 * t, y, 1) % 13) as i32 - 6;
                    40 + ((x + 2 * t) / bar_w % 8) as i32 * 22 + grad as i32 + texture
                };
                *p = (value + grain).clamp(16, 235) as u8;
            }
        }
        let (cw, ch) = (w / 2, h / 2);
        for y in 0..ch {
            let ur = &mut pu[y * strides[1]..y * strides[1] + cw];
            for (x, p) in ur.iter_mut().enumerate() {
                *p = (64 + (x * 128 / cw + t) % 128) as u8;
            }
            let vr = &mut pv[y * strides[2]..y * strides[2] + cw];
            for (x, p) in vr.iter_mut().enumerate() {
                let in_box = 2 * x >= bx && 2 * x < bx + bw && 2 * y >= by && 2 * y < by + bh;
                *p = if in_box {
                    200
                } else {
                    (64 + y * 128 / ch) as u8
                };
            }
        }
        write_code(out, (n % 65_536) as u16);
        Ok(())
    }
}

/// A cheap deterministic hash of a position and a salt.
fn hash(x: usize, y: usize, salt: usize) -> u32 {
    let mut h = (x as u32).wrapping_mul(0x9e37_79b1)
        ^ (y as u32).wrapping_mul(0x85eb_ca77)
        ^ (salt as u32).wrapping_mul(0xc2b2_ae3d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^ (h >> 12)
}

impl VideoSource for TestPattern {
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError> {
        self.draw(self.frame, out)?;
        out.capture = Instant::now();
        self.frame += 1;
        Ok(true)
    }

    fn frame_rate(&self) -> f64 {
        f64::from(self.fps)
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::video::read_code;

    #[test]
    fn pattern_moves_and_numbers_its_frames() {
        let mut p = TestPattern::new(640, 360, 30).unwrap();
        let mut a = VideoFrame::black(2, 2).unwrap();
        let mut b = VideoFrame::black(2, 2).unwrap();
        assert!(p.read_frame(&mut a).unwrap());
        assert!(p.read_frame(&mut b).unwrap());
        assert_eq!(a.size(), (640, 360));
        assert_eq!((read_code(&a), read_code(&b)), (Some(0), Some(1)));
        // Below the barcode, most rows changed between frames.
        let s = a.stride(0);
        let changed = (40..360)
            .filter(|&r| a.y()[r * s..r * s + 640] != b.y()[r * s..r * s + 640])
            .count();
        assert!(changed > 200, "{changed} rows changed");
        // The picture is not flat: many distinct luma values.
        let mut seen = [false; 256];
        a.y().iter().for_each(|&v| seen[v as usize] = true);
        assert!(seen.iter().filter(|&&s| s).count() > 50);
    }

    #[test]
    fn any_valid_size_draws() {
        for (w, h) in [(2, 2), (4, 2), (16, 8), (1280, 720), (4096, 2304)] {
            let mut p = TestPattern::new(w, h, 30).unwrap();
            let mut f = VideoFrame::black(2, 2).unwrap();
            for _ in 0..3 {
                assert!(p.read_frame(&mut f).unwrap());
            }
            assert_eq!(f.size(), (w, h));
        }
        assert!(TestPattern::new(640, 360, 0).is_err());
    }
}
