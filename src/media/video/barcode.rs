//! The frame-number barcode: 16 bits as luma blocks along the top edge of the picture.
//!
//! Bit i (MSB first) is the 32x32 luma block at x in [32i, 32i + 32), y in [0, 32): 235 for 1,
//! 16 for 0, chroma 128 under it. A reader averages each block's middle 16x16, which survives
//! lossy coding and scaling by the codec. Needs a picture at least 512 wide and 32 high.

use super::VideoFrame;

/// Bits in the code (the frame number modulo 65536).
pub const BARCODE_BITS: usize = 16;
/// Side of one block in luma pixels.
pub const BARCODE_BLOCK: usize = 32;

const ONE: u8 = 235;
const ZERO: u8 = 16;
/// Averages in this range are neither a clear 0 nor a clear 1.
const AMBIGUOUS: std::ops::RangeInclusive<u32> = 80..=170;
const THRESHOLD: u32 = 125;

fn fits(frame: &VideoFrame) -> bool {
    frame.width() as usize >= BARCODE_BITS * BARCODE_BLOCK
        && frame.height() as usize >= BARCODE_BLOCK
}

/// Paints `code` into the top edge of `frame`. Does nothing on a picture smaller than
/// 512x32.
pub fn write_code(frame: &mut VideoFrame, code: u16) {
    if !fits(frame) {
        return;
    }
    let strides = [frame.stride(0), frame.stride(1), frame.stride(2)];
    let [y, u, v] = frame.planes_mut();
    for bit in 0..BARCODE_BITS {
        let luma = if code & (0x8000 >> bit) != 0 {
            ONE
        } else {
            ZERO
        };
        let x0 = bit * BARCODE_BLOCK;
        for row in 0..BARCODE_BLOCK {
            let start = row * strides[0] + x0;
            y[start..start + BARCODE_BLOCK].fill(luma);
        }
        let (cx0, half) = (x0 / 2, BARCODE_BLOCK / 2);
        for row in 0..half {
            let su = row * strides[1] + cx0;
            u[su..su + half].fill(128);
            let sv = row * strides[2] + cx0;
            v[sv..sv + half].fill(128);
        }
    }
}

/// Reads the code painted by [`write_code`]. None if the picture is too small or any block is
/// ambiguous (its middle averages between 80 and 170).
pub fn read_code(frame: &VideoFrame) -> Option<u16> {
    if !fits(frame) {
        return None;
    }
    let stride = frame.stride(0);
    let y = frame.y();
    let (lo, hi) = (BARCODE_BLOCK / 4, BARCODE_BLOCK * 3 / 4);
    let mut code = 0u16;
    for bit in 0..BARCODE_BITS {
        let x0 = bit * BARCODE_BLOCK;
        let sum: u32 = (lo..hi)
            .flat_map(|row| &y[row * stride + x0 + lo..row * stride + x0 + hi])
            .map(|&p| u32::from(p))
            .sum();
        let mean = sum / ((hi - lo) * (hi - lo)) as u32;
        if AMBIGUOUS.contains(&mean) {
            return None;
        }
        code = (code << 1) | u16::from(mean > THRESHOLD);
    }
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_msb_first_in_the_specified_places() {
        let mut f = VideoFrame::black(640, 360).unwrap();
        f.plane_mut(0).fill(100);
        for code in [0u16, 1, 0x8000, 0xa5c3, 65535] {
            write_code(&mut f, code);
            assert_eq!(read_code(&f), Some(code));
        }
        write_code(&mut f, 0x8001);
        // Block 0 (MSB) is white, block 1 black, block 15 (LSB) white; below the blocks the
        // picture is untouched.
        let s = f.stride(0);
        assert_eq!(f.y()[0], 235);
        assert_eq!(f.y()[31 * s + 31], 235);
        assert_eq!(f.y()[32], 16);
        assert_eq!(f.y()[15 * 32], 235);
        assert_eq!(f.y()[32 * s], 100);
        assert_eq!(f.y()[16 * 32], 100);
    }

    #[test]
    fn ambiguous_or_small_pictures_read_none() {
        let mut f = VideoFrame::black(640, 360).unwrap();
        write_code(&mut f, 0xffff);
        // Grey over the middle of block 3.
        let s = f.stride(0);
        for row in 8..24 {
            f.plane_mut(0)[row * s + 3 * 32 + 8..row * s + 3 * 32 + 24].fill(128);
        }
        assert_eq!(read_code(&f), None);
        let mut small = VideoFrame::black(320, 240).unwrap();
        write_code(&mut small, 7);
        assert_eq!(read_code(&small), None);
        assert!(small.y().iter().all(|&p| p == 16));
    }
}
