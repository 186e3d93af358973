//! VP8 through libvpx: a thin safe wrapper over the raw bindings. All of the video layer's
//! codec `unsafe` is in this file. Every libvpx call's status is checked, and each context is
//! destroyed exactly once, in `Drop`, and only if its init succeeded.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_uint};
use std::mem::MaybeUninit;
use std::ptr;
use std::time::Instant;

use vpx_sys as sys;

use super::codec::{EncodedVideoFrame, VideoCodec, VideoDecoder, VideoEncoder, VideoEncoderConfig};
use super::frame::check_size;
use super::{MAX_DIMENSION, MAX_PIXELS, VIDEO_CLOCK_RATE, VideoError, VideoFrame};

const NAME: &str = "VP8";

/// Largest encoded frame the decoder accepts (a 4096x2304 keyframe at high quality is far
/// below this).
const MAX_ENCODED: usize = 8 << 20;

/// Lowest and highest target bitrates accepted (kbit/s).
const MIN_KBPS: u32 = 20;
const MAX_KBPS: u32 = 100_000;

fn err_text(ctx: *mut sys::vpx_codec_ctx_t, err: sys::vpx_codec_err_t) -> String {
    // SAFETY: libvpx returns static NUL-terminated strings for error codes; the detail string
    // (possibly null) is owned by the live context and copied out before any other call.
    unsafe {
        let base = CStr::from_ptr(sys::vpx_codec_err_to_string(err))
            .to_string_lossy()
            .into_owned();
        let detail = if ctx.is_null() {
            ptr::null()
        } else {
            sys::vpx_codec_error_detail(ctx)
        };
        if detail.is_null() {
            base
        } else {
            format!("{base}: {}", CStr::from_ptr(detail).to_string_lossy())
        }
    }
}

fn enc_err(ctx: *mut sys::vpx_codec_ctx_t, what: &str, err: sys::vpx_codec_err_t) -> VideoError {
    VideoError::Encode {
        codec: NAME,
        detail: format!("{what}: {}", err_text(ctx, err)),
    }
}

fn dec_err(detail: impl Into<String>) -> VideoError {
    VideoError::Decode {
        codec: NAME,
        detail: detail.into(),
    }
}

/// A libvpx context on the heap, so its address stays put while libvpx holds it.
struct Context {
    ctx: Box<sys::vpx_codec_ctx_t>,
    live: bool,
}

impl Context {
    fn new() -> Self {
        // SAFETY: vpx_codec_ctx_t is plain C data (pointers, integers, a union of pointers);
        // all-zero is its documented "not initialised" state.
        let ctx = Box::new(unsafe { MaybeUninit::<sys::vpx_codec_ctx_t>::zeroed().assume_init() });
        Self { ctx, live: false }
    }

    fn ptr(&mut self) -> *mut sys::vpx_codec_ctx_t {
        &mut *self.ctx
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.live {
            // SAFETY: the context was initialised by a successful init and not yet destroyed.
            // Destroy's status is not actionable in a destructor.
            let _ = unsafe { sys::vpx_codec_destroy(&mut *self.ctx) };
            self.live = false;
        }
    }
}

// SAFETY: a libvpx context has no thread affinity; it is owned by one value and used through
// `&mut self` only, so it is never touched from two threads at once.
unsafe impl Send for Context {}

/// The encoder configuration libvpx copies at init and on every change.
struct EncCfg(sys::vpx_codec_enc_cfg_t);

// SAFETY: its only pointers are the two-pass statistics buffers, which stay null (one pass).
unsafe impl Send for EncCfg {}

/// A real-time VP8 encoder: CBR, no lag, error resilient, keyframes on demand.
pub struct Vp8Encoder {
    ctx: Context,
    cfg: EncCfg,
    config: VideoEncoderConfig,
    force_keyframe: bool,
}

impl std::fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Vp8Encoder {
    /// A new encoder with these settings.
    pub fn new(config: &VideoEncoderConfig) -> Result<Self, VideoError> {
        check_size(config.width.into(), config.height.into())?;
        check_kbps(config.target_kbps)?;
        if config.fps == 0 || config.fps > 240 {
            return Err(VideoError::InvalidConfig(format!(
                "frame rate {} (need 1..=240)",
                config.fps
            )));
        }
        let cpu_used = config
            .cpu_used
            .unwrap_or_else(|| VideoEncoderConfig::default_cpu_used(config.width, config.height));
        if !(-16..=16).contains(&cpu_used) {
            return Err(VideoError::InvalidConfig(format!(
                "cpu_used {cpu_used} (need -16..=16)"
            )));
        }
        let threads = config
            .threads
            .unwrap_or_else(|| VideoEncoderConfig::default_threads(config.width, config.height))
            .clamp(1, 16);

        let mut cfg = MaybeUninit::<sys::vpx_codec_enc_cfg_t>::zeroed();
        // SAFETY: the interface is libvpx's static VP8 encoder; cfg points at writable memory
        // of the right type, filled completely on success.
        let cfg = unsafe {
            let err =
                sys::vpx_codec_enc_config_default(sys::vpx_codec_vp8_cx(), cfg.as_mut_ptr(), 0);
            if err != sys::VPX_CODEC_OK {
                return Err(enc_err(ptr::null_mut(), "default config", err));
            }
            cfg.assume_init()
        };
        let mut encoder = Self {
            ctx: Context::new(),
            cfg: EncCfg(cfg),
            config: config.clone(),
            force_keyframe: false,
        };
        let cfg = &mut encoder.cfg.0;
        cfg.g_w = config.width;
        cfg.g_h = config.height;
        cfg.g_timebase = sys::vpx_rational {
            num: 1,
            den: VIDEO_CLOCK_RATE as c_int,
        };
        cfg.g_threads = threads;
        cfg.g_error_resilient = sys::VPX_ERROR_RESILIENT_DEFAULT;
        cfg.g_pass = sys::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.g_lag_in_frames = 0;
        cfg.rc_end_usage = sys::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = config.target_kbps;
        // Rate-control settings as real-time WebRTC senders use them.
        cfg.rc_min_quantizer = 2;
        cfg.rc_max_quantizer = 56;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_initial_sz = 500;
        cfg.rc_buf_optimal_sz = 600;
        cfg.rc_buf_sz = 1000;
        // Never drop frames: every captured picture is sent (the call adapts by bitrate and
        // size instead).
        cfg.rc_dropframe_thresh = 0;
        cfg.rc_resize_allowed = 0;
        cfg.kf_mode = sys::vpx_kf_mode::VPX_KF_AUTO;
        cfg.kf_min_dist = 0;
        cfg.kf_max_dist = config.keyframe_interval.max(1);
        encoder.init(cpu_used)?;
        Ok(encoder)
    }

    fn init(&mut self, cpu_used: i32) -> Result<(), VideoError> {
        let ctx = self.ctx.ptr();
        // SAFETY: ctx is a zeroed, heap-pinned context; cfg is a complete configuration that
        // libvpx copies. On failure libvpx leaves nothing to destroy.
        let err = unsafe {
            sys::vpx_codec_enc_init_ver(
                ctx,
                sys::vpx_codec_vp8_cx(),
                &self.cfg.0,
                0,
                sys::VPX_ENCODER_ABI_VERSION as c_int,
            )
        };
        if err != sys::VPX_CODEC_OK {
            return Err(enc_err(ptr::null_mut(), "init", err));
        }
        self.ctx.live = true;
        self.control(sys::vp8e_enc_control_id::VP8E_SET_CPUUSED, cpu_used)?;
        self.control(sys::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY, 0)?;
        // Cap keyframes at 9x an average frame (WebRTC's rule for a 600 ms buffer at 30 fps)
        // so a forced keyframe does not flood the link.
        self.control(
            sys::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT,
            900,
        )?;
        Ok(())
    }

    fn control(&mut self, id: sys::vp8e_enc_control_id, value: i32) -> Result<(), VideoError> {
        let ctx = self.ctx.ptr();
        // SAFETY: a live encoder context; these controls take one int (or unsigned int of the
        // same size) argument.
        let err = unsafe { sys::vpx_codec_control_(ctx, id as c_int, value as c_int) };
        if err != sys::VPX_CODEC_OK {
            return Err(enc_err(ctx, "control", err));
        }
        Ok(())
    }

    /// The settings in force.
    pub fn config(&self) -> &VideoEncoderConfig {
        &self.config
    }
}

fn check_kbps(kbps: u32) -> Result<(), VideoError> {
    if (MIN_KBPS..=MAX_KBPS).contains(&kbps) {
        Ok(())
    } else {
        Err(VideoError::InvalidConfig(format!(
            "bitrate {kbps} kbit/s (need {MIN_KBPS}..={MAX_KBPS})"
        )))
    }
}

impl VideoEncoder for Vp8Encoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp8
    }

    fn size(&self) -> (u32, u32) {
        (self.config.width, self.config.height)
    }

    fn encode_into(
        &mut self,
        frame: &VideoFrame,
        pts: u64,
        out: &mut EncodedVideoFrame,
    ) -> Result<bool, VideoError> {
        let (width, height) = self.size();
        if frame.size() != (width, height) {
            return Err(VideoError::SizeMismatch {
                width,
                height,
                got_width: frame.width(),
                got_height: frame.height(),
            });
        }
        let pts = i64::try_from(pts)
            .map_err(|_| VideoError::InvalidConfig(format!("timestamp {pts} out of range")))?;
        // SAFETY: vpx_image_t is plain C data; all-zero is a valid empty descriptor.
        let mut img = unsafe { MaybeUninit::<sys::vpx_image_t>::zeroed().assume_init() };
        img.fmt = sys::vpx_img_fmt::VPX_IMG_FMT_I420;
        img.w = width;
        img.h = height;
        img.d_w = width;
        img.d_h = height;
        img.bit_depth = 8;
        img.bps = 12;
        img.x_chroma_shift = 1;
        img.y_chroma_shift = 1;
        for i in 0..3 {
            // libvpx only reads the input picture; the pointer type is not const in C.
            img.planes[i] = frame.plane(i).as_ptr().cast_mut();
            img.stride[i] =
                c_int::try_from(frame.stride(i)).map_err(|_| VideoError::InvalidSize {
                    width: width.into(),
                    height: height.into(),
                })?;
        }
        let flags = if self.force_keyframe {
            sys::VPX_EFLAG_FORCE_KF as sys::vpx_enc_frame_flags_t
        } else {
            0
        };
        let duration = std::os::raw::c_ulong::from(VIDEO_CLOCK_RATE / self.config.fps.max(1));
        let ctx = self.ctx.ptr();
        // SAFETY: a live encoder context; img describes the frame's planes (checked sizes and
        // strides, the frame outlives the call), and libvpx copies the picture before return.
        let err = unsafe {
            sys::vpx_codec_encode(
                ctx,
                &img,
                pts,
                duration,
                flags,
                std::os::raw::c_ulong::from(sys::VPX_DL_REALTIME),
            )
        };
        if err != sys::VPX_CODEC_OK {
            return Err(enc_err(ctx, "encode", err));
        }
        out.data.clear();
        out.keyframe = false;
        let mut produced = false;
        let mut iter: sys::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: a live context and its iterator; the packet stays valid until the next
            // call on the context, and its buffer is copied out before that.
            let pkt = unsafe { sys::vpx_codec_get_cx_data(ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: a non-null packet from libvpx; for frame packets the union holds `frame`
            // with buf/sz describing valid encoded bytes.
            unsafe {
                if (*pkt).kind == sys::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    let f = (*pkt).data.frame;
                    let len = usize::try_from(f.sz).unwrap_or(0);
                    if !f.buf.is_null() && len > 0 {
                        out.data
                            .extend_from_slice(std::slice::from_raw_parts(f.buf.cast::<u8>(), len));
                    }
                    out.keyframe |= f.flags & sys::VPX_FRAME_IS_KEY != 0;
                    produced = true;
                }
            }
        }
        if produced && out.keyframe {
            self.force_keyframe = false;
        }
        Ok(produced && !out.data.is_empty())
    }

    fn bitrate(&self) -> u32 {
        self.config.target_kbps
    }

    fn set_bitrate(&mut self, kbps: u32) -> Result<(), VideoError> {
        check_kbps(kbps)?;
        self.cfg.0.rc_target_bitrate = kbps;
        let ctx = self.ctx.ptr();
        // SAFETY: a live encoder context; cfg is complete and only the bitrate changed.
        let err = unsafe { sys::vpx_codec_enc_config_set(ctx, &self.cfg.0) };
        if err != sys::VPX_CODEC_OK {
            return Err(enc_err(ctx, "set bitrate", err));
        }
        self.config.target_kbps = kbps;
        Ok(())
    }

    fn force_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    fn reconfigure(&mut self, width: u32, height: u32) -> Result<(), VideoError> {
        check_size(width.into(), height.into())?;
        if (width, height) == self.size() {
            return Ok(());
        }
        let mut config = self.config.clone();
        config.width = width;
        config.height = height;
        // A fresh encoder: its first frame is a keyframe at the new size.
        *self = Self::new(&config)?;
        Ok(())
    }
}

/// A VP8 decoder for untrusted input.
///
/// Frames larger than 8 MiB or keyframes that announce a picture beyond
/// [`MAX_DIMENSION`] / [`MAX_PIXELS`] are refused before libvpx allocates for them. Pictures of
/// odd width or height (legal in VP8) lose their last column or row, as frames are even-sized.
pub struct Vp8Decoder {
    ctx: Context,
}

impl std::fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Decoder").finish_non_exhaustive()
    }
}

impl Vp8Decoder {
    /// A new decoder (one thread).
    pub fn new() -> Result<Self, VideoError> {
        let mut ctx = Context::new();
        let cfg = sys::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        // SAFETY: a zeroed, heap-pinned context and a complete configuration that libvpx
        // copies. On failure libvpx leaves nothing to destroy.
        let err = unsafe {
            sys::vpx_codec_dec_init_ver(
                ctx.ptr(),
                sys::vpx_codec_vp8_dx(),
                &cfg,
                0,
                sys::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        if err != sys::VPX_CODEC_OK {
            return Err(dec_err(format!("init: {}", err_text(ptr::null_mut(), err))));
        }
        ctx.live = true;
        Ok(Self { ctx })
    }
}

/// Checks what can be checked before libvpx sees the frame: its length and, for a keyframe,
/// the start code and the announced size (RFC 6386 section 9.1).
fn precheck(data: &[u8]) -> Result<(), VideoError> {
    if data.is_empty() {
        return Err(dec_err("empty frame"));
    }
    if data.len() > MAX_ENCODED {
        return Err(dec_err(format!(
            "frame of {} bytes is too large",
            data.len()
        )));
    }
    if data[0] & 1 == 0 {
        if data.len() < 10 {
            return Err(dec_err("truncated keyframe header"));
        }
        if data[3..6] != [0x9d, 0x01, 0x2a] {
            return Err(dec_err("keyframe without the VP8 start code"));
        }
        let width = u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3fff);
        let height = u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3fff);
        if width == 0
            || height == 0
            || width > MAX_DIMENSION
            || height > MAX_DIMENSION
            || u64::from(width) * u64::from(height) > MAX_PIXELS
        {
            return Err(dec_err(format!(
                "keyframe of unsupported size {width}x{height}"
            )));
        }
    } else if data.len() < 3 {
        return Err(dec_err("truncated frame header"));
    }
    Ok(())
}

impl VideoDecoder for Vp8Decoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp8
    }

    fn decode_into(&mut self, data: &[u8], out: &mut VideoFrame) -> Result<bool, VideoError> {
        precheck(data)?;
        let len = c_uint::try_from(data.len()).map_err(|_| dec_err("frame too large"))?;
        let ctx = self.ctx.ptr();
        // SAFETY: a live decoder context; data is a valid slice of `len` bytes that libvpx
        // reads during the call only.
        let err = unsafe { sys::vpx_codec_decode(ctx, data.as_ptr(), len, ptr::null_mut(), 0) };
        if err != sys::VPX_CODEC_OK {
            return Err(dec_err(err_text(ctx, err)));
        }
        let mut shown = false;
        let mut iter: sys::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: a live context and its iterator; the image stays valid until the next
            // decode call and is copied out below.
            let img = unsafe { sys::vpx_codec_get_frame(ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            if shown {
                continue; // VP8 shows at most one picture per frame; drain the iterator.
            }
            // SAFETY: a non-null image from libvpx.
            let img = unsafe { &*img };
            copy_image(img, out)?;
            shown = true;
        }
        Ok(shown)
    }

    fn last_picture_damaged(&mut self) -> bool {
        let mut corrupted: c_int = 0;
        let ctx = self.ctx.ptr();
        // SAFETY: a live decoder context; this control writes one int through the pointer.
        let err = unsafe {
            sys::vpx_codec_control_(
                ctx,
                sys::vp8_dec_control_id::VP8D_GET_FRAME_CORRUPTED as c_int,
                &mut corrupted as *mut c_int,
            )
        };
        // No answer (no picture yet) counts as damaged: the receiver needs a keyframe.
        err != sys::VPX_CODEC_OK || corrupted != 0
    }
}

/// Copies a decoded libvpx image into `out`, cropping odd sizes to even.
fn copy_image(img: &sys::vpx_image_t, out: &mut VideoFrame) -> Result<(), VideoError> {
    if img.fmt != sys::vpx_img_fmt::VPX_IMG_FMT_I420
        || img.x_chroma_shift != 1
        || img.y_chroma_shift != 1
    {
        return Err(dec_err("decoder produced a picture that is not I420"));
    }
    let width = img.d_w & !1;
    let height = img.d_h & !1;
    check_size(width.into(), height.into()).map_err(|_| {
        dec_err(format!(
            "picture of unsupported size {}x{}",
            img.d_w, img.d_h
        ))
    })?;
    let (w, h) = (width as usize, height as usize);
    let mut planes: [&[u8]; 3] = [&[], &[], &[]];
    let mut strides = [0usize; 3];
    for i in 0..3 {
        let stride = usize::try_from(img.stride[i]).map_err(|_| dec_err("negative stride"))?;
        let (pw, ph) = if i == 0 { (w, h) } else { (w / 2, h / 2) };
        if img.planes[i].is_null() || stride < pw {
            return Err(dec_err("decoder produced an invalid picture"));
        }
        // SAFETY: libvpx's picture holds at least d_h rows (chroma (d_h+1)/2) of `stride`
        // bytes for plane i, each at least d_w (chroma (d_w+1)/2) wide; we read no more than
        // that, and only until the next call on the decoder.
        planes[i] = unsafe { std::slice::from_raw_parts(img.planes[i], stride * (ph - 1) + pw) };
        strides[i] = stride;
    }
    out.copy_from_planes(width, height, planes, strides)?;
    out.capture = Instant::now();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precheck_refuses_oversized_and_broken_keyframes() {
        let mut key = [0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        assert!(precheck(&key).is_ok());
        key[3] = 0;
        assert!(precheck(&key).is_err());
        key[3] = 0x9d;
        // 16383 x 360.
        key[6] = 0xff;
        key[7] = 0x3f;
        assert!(precheck(&key).is_err());
        assert!(precheck(&key[..9]).is_err());
        assert!(precheck(&[]).is_err());
        assert!(precheck(&[0x51, 0x15]).is_err());
        assert!(precheck(&[0x51, 0x15, 0x00]).is_ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut cfg = VideoEncoderConfig::new(640, 360);
        cfg.target_kbps = 0;
        assert!(matches!(
            Vp8Encoder::new(&cfg),
            Err(VideoError::InvalidConfig(_))
        ));
        let cfg = VideoEncoderConfig::new(641, 360);
        assert!(matches!(
            Vp8Encoder::new(&cfg),
            Err(VideoError::InvalidSize { .. })
        ));
        let mut enc = Vp8Encoder::new(&VideoEncoderConfig::new(320, 240)).unwrap();
        assert!(enc.set_bitrate(0).is_err());
        assert_eq!(enc.bitrate(), 300);
        let frame = VideoFrame::black(640, 360).unwrap();
        assert!(matches!(
            enc.encode(&frame, 0),
            Err(VideoError::SizeMismatch { .. })
        ));
    }
}
