//! V4L2 capture through raw ioctls (Linux). All of the camera's `unsafe` is in this file:
//! ioctls on a descriptor we own, with structures laid out as in `linux/videodev2.h` (sizes
//! checked at compile time against the sizes the ioctl numbers encode), and mmap'd buffers
//! that are unmapped exactly once, in `Drop`.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_ulong, c_void};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a capture error says.
pub(crate) type Error = String;

const fn fourcc(code: &[u8; 4]) -> u32 {
    (code[0] as u32) | (code[1] as u32) << 8 | (code[2] as u32) << 16 | (code[3] as u32) << 24
}

/// Pixel formats we take: planar I420 as is, packed YUYV converted.
pub(crate) const FMT_YU12: u32 = fourcc(b"YU12");
pub(crate) const FMT_YUYV: u32 = fourcc(b"YUYV");

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const FIELD_NONE: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const BUF_FLAG_ERROR: u32 = 0x0000_0040;

/// Buffers asked of the driver.
const BUFFERS: u32 = 4;
/// A camera that delivers nothing for this long is reported as stalled.
const STALL: Duration = Duration::from_secs(3);

#[repr(C)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    private: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// `struct v4l2_format`: the union holds pointers elsewhere, hence 8-byte alignment.
#[repr(C, align(8))]
struct Format {
    kind: u32,
    pad: u32,
    pix: PixFormat,
    rest: [u8; 200 - 48],
}

#[repr(C)]
struct Fract {
    numerator: u32,
    denominator: u32,
}

#[repr(C)]
struct StreamParm {
    kind: u32,
    capability: u32,
    capturemode: u32,
    timeperframe: Fract,
    extendedmode: u32,
    readbuffers: u32,
    reserved: [u32; 4],
    rest: [u8; 200 - 40],
}

#[repr(C)]
struct RequestBuffers {
    count: u32,
    kind: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
struct Timecode {
    kind: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
struct Buffer {
    index: u32,
    kind: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    /// The union `m`; for MMAP buffers its low 32 bits are the offset.
    m: u64,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

const fn ioc(dir: c_ulong, nr: c_ulong, size: usize) -> c_ulong {
    (dir << 30) | ((size as c_ulong) << 16) | ((b'V' as c_ulong) << 8) | nr
}
const READ: c_ulong = 2;
const WRITE: c_ulong = 1;

const VIDIOC_QUERYCAP: c_ulong = ioc(READ, 0, size_of::<Capability>());
const VIDIOC_S_FMT: c_ulong = ioc(READ | WRITE, 5, size_of::<Format>());
const VIDIOC_REQBUFS: c_ulong = ioc(READ | WRITE, 8, size_of::<RequestBuffers>());
const VIDIOC_QUERYBUF: c_ulong = ioc(READ | WRITE, 9, size_of::<Buffer>());
const VIDIOC_QBUF: c_ulong = ioc(READ | WRITE, 15, size_of::<Buffer>());
const VIDIOC_DQBUF: c_ulong = ioc(READ | WRITE, 17, size_of::<Buffer>());
const VIDIOC_STREAMON: c_ulong = ioc(WRITE, 18, size_of::<c_int>());
const VIDIOC_STREAMOFF: c_ulong = ioc(WRITE, 19, size_of::<c_int>());
const VIDIOC_S_PARM: c_ulong = ioc(READ | WRITE, 22, size_of::<StreamParm>());

// The kernel's sizes on 64-bit Linux; a mismatch would change the ioctl numbers.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<Capability>() == 104);
    assert!(size_of::<Format>() == 208);
    assert!(size_of::<StreamParm>() == 204);
    assert!(size_of::<RequestBuffers>() == 20);
    assert!(size_of::<Buffer>() == 88);
    assert!(VIDIOC_QUERYCAP == 0x8068_5600);
    assert!(VIDIOC_S_FMT == 0xc0d0_5605);
    assert!(VIDIOC_DQBUF == 0xc058_5611);
};

/// A zeroed V4L2 structure.
fn zeroed<T>() -> T {
    // SAFETY: only used for the plain-integer structures above, for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// One ioctl, retried on EINTR.
fn ioctl<T>(file: &File, request: c_ulong, arg: &mut T) -> std::io::Result<()> {
    loop {
        // SAFETY: `arg` is a live, exclusively borrowed structure of the size `request`
        // encodes; the kernel reads and writes only within it.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                request as libc::Ioctl,
                std::ptr::from_mut(arg),
            )
        };
        if r != -1 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

/// An open, streaming capture device.
pub(crate) struct Capture {
    file: File,
    maps: Vec<Mapping>,
    streaming: bool,
    /// Negotiated picture: width, height, pixel format, bytes per line.
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixelformat: u32,
    pub(crate) bytesperline: u32,
    /// Negotiated frames per second (the request if the driver would not say).
    pub(crate) fps: f64,
    pub(crate) device: PathBuf,
}

// SAFETY: the mappings are private to this value and only read through `&mut self`.
unsafe impl Send for Capture {}

impl Capture {
    /// Opens `device`, negotiates the closest of I420 or YUYV at about `width` x `height`
    /// and `fps`, and starts streaming.
    pub(crate) fn open(device: &Path, width: u32, height: u32, fps: u32) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(device)
            .map_err(|e| format!("cannot open: {e}"))?;
        let mut cap: Capability = zeroed();
        ioctl(&file, VIDIOC_QUERYCAP, &mut cap).map_err(|e| format!("not a V4L2 device ({e})"))?;
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & CAP_VIDEO_CAPTURE == 0 || caps & CAP_STREAMING == 0 {
            return Err("not a streaming video capture device".into());
        }

        let mut negotiated = None;
        for pixelformat in [FMT_YU12, FMT_YUYV] {
            let mut fmt: Format = zeroed();
            fmt.kind = BUF_TYPE_VIDEO_CAPTURE;
            fmt.pix.width = width;
            fmt.pix.height = height;
            fmt.pix.pixelformat = pixelformat;
            fmt.pix.field = FIELD_NONE;
            if ioctl(&file, VIDIOC_S_FMT, &mut fmt).is_ok() && fmt.pix.pixelformat == pixelformat {
                negotiated = Some(fmt.pix);
                break;
            }
        }
        let pix = negotiated.ok_or("the camera offers neither I420 (YU12) nor YUYV")?;

        let mut parm: StreamParm = zeroed();
        parm.kind = BUF_TYPE_VIDEO_CAPTURE;
        parm.timeperframe = Fract {
            numerator: 1,
            denominator: fps.max(1),
        };
        let fps = match ioctl(&file, VIDIOC_S_PARM, &mut parm) {
            Ok(()) if parm.timeperframe.numerator > 0 && parm.timeperframe.denominator > 0 => {
                f64::from(parm.timeperframe.denominator) / f64::from(parm.timeperframe.numerator)
            }
            _ => f64::from(fps.max(1)),
        };

        let mut capture = Self {
            file,
            maps: Vec::new(),
            streaming: false,
            width: pix.width,
            height: pix.height,
            pixelformat: pix.pixelformat,
            bytesperline: pix.bytesperline,
            fps,
            device: device.to_owned(),
        };
        let mut req: RequestBuffers = zeroed();
        req.count = BUFFERS;
        req.kind = BUF_TYPE_VIDEO_CAPTURE;
        req.memory = MEMORY_MMAP;
        ioctl(&capture.file, VIDIOC_REQBUFS, &mut req)
            .map_err(|e| format!("no capture buffers: {e}"))?;
        if req.count < 2 {
            return Err(format!("only {} capture buffer(s)", req.count));
        }
        for index in 0..req.count.min(16) {
            let mut buf = capture.buffer(index);
            ioctl(&capture.file, VIDIOC_QUERYBUF, &mut buf)
                .map_err(|e| format!("buffer {index}: {e}"))?;
            let len = buf.length as usize;
            // SAFETY: maps a buffer the driver just described (offset and length) from our
            // descriptor; the result is checked and unmapped once in Drop.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    capture.file.as_raw_fd(),
                    (buf.m & 0xffff_ffff) as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            capture.maps.push(Mapping { ptr, len });
            ioctl(&capture.file, VIDIOC_QBUF, &mut buf)
                .map_err(|e| format!("queue buffer {index}: {e}"))?;
        }
        let mut kind = BUF_TYPE_VIDEO_CAPTURE as c_int;
        ioctl(&capture.file, VIDIOC_STREAMON, &mut kind).map_err(|e| format!("stream on: {e}"))?;
        capture.streaming = true;
        Ok(capture)
    }

    fn buffer(&self, index: u32) -> Buffer {
        let mut buf: Buffer = zeroed();
        buf.index = index;
        buf.kind = BUF_TYPE_VIDEO_CAPTURE;
        buf.memory = MEMORY_MMAP;
        buf
    }

    /// Waits for the next good picture and hands its bytes to `f`, then gives the buffer back.
    pub(crate) fn next<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let deadline = Instant::now() + STALL;
        let buf = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no picture for {} s", STALL.as_secs()));
            }
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call's duration.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(10_000) as c_int) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {err}"));
            }
            if r == 0 {
                continue;
            }
            let mut buf = self.buffer(0);
            match ioctl(&self.file, VIDIOC_DQBUF, &mut buf) {
                Ok(()) if buf.flags & BUF_FLAG_ERROR != 0 => {
                    // A damaged picture: give the buffer back and wait for the next one.
                    ioctl(&self.file, VIDIOC_QBUF, &mut buf)
                        .map_err(|e| format!("requeue: {e}"))?;
                }
                Ok(()) => break buf,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("dequeue: {e}")),
            }
        };
        let mut buf = buf;
        let result = match self.maps.get(buf.index as usize) {
            Some(map) => {
                let used = (buf.bytesused as usize).min(map.len);
                // SAFETY: the driver filled `used` bytes of this mapped buffer and does not
                // touch it until we queue it again below.
                let data = unsafe { std::slice::from_raw_parts(map.ptr.cast::<u8>(), used) };
                Ok(f(data))
            }
            None => Err(format!("driver returned unknown buffer {}", buf.index)),
        };
        ioctl(&self.file, VIDIOC_QBUF, &mut buf).map_err(|e| format!("requeue: {e}"))?;
        result
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.streaming {
            let mut kind = BUF_TYPE_VIDEO_CAPTURE as c_int;
            let _ = ioctl(&self.file, VIDIOC_STREAMOFF, &mut kind);
        }
        for map in self.maps.drain(..) {
            // SAFETY: a mapping made in `open` with this length, unmapped only here.
            unsafe { libc::munmap(map.ptr, map.len) };
        }
    }
}
