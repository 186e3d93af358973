//! Y4M (YUV4MPEG2) files: a source that plays one and a sink that records decoded video.

use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor, Read, Write};
use std::path::Path;
use std::time::Instant;

use super::frame::check_size;
use super::{MAX_PIXELS, VideoError, VideoFrame, VideoSink, VideoSource};

/// Longest header line accepted (the `y4m` crate's own limit).
const MAX_HEADER: usize = 1024;

fn y4m_err(e: y4m::Error) -> VideoError {
    match e {
        y4m::Error::IoError(io) => VideoError::Io(io),
        y4m::Error::UnknownColorspace => VideoError::UnsupportedFormat(
            "Y4M colour space unknown; only 8-bit 4:2:0 (C420, C420jpeg, C420paldv, C420mpeg2) is supported".into(),
        ),
        other => VideoError::Y4m(other.to_string()),
    }
}

/// Plays a Y4M file: 8-bit 4:2:0 only, even sizes, at the header's frame rate; ends at the end
/// of the file (a truncated last frame is dropped). Not live (the call paces it).
pub struct Y4mSource {
    decoder: y4m::Decoder<Box<dyn Read + Send>>,
    width: u32,
    height: u32,
    fps: f64,
}

impl std::fmt::Debug for Y4mSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Y4mSource")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .finish_non_exhaustive()
    }
}

impl Y4mSource {
    /// Opens a Y4M file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VideoError> {
        Self::new(BufReader::new(File::open(path)?))
    }

    /// Reads Y4M from any reader (buffer it: the header is read a byte at a time).
    pub fn new(mut reader: impl Read + Send + 'static) -> Result<Self, VideoError> {
        // Check the size in the header ourselves before the y4m crate multiplies it out.
        let mut header = Vec::with_capacity(128);
        let mut byte = [0u8; 1];
        loop {
            if reader.read(&mut byte)? == 0 {
                return Err(VideoError::Y4m("no header line".into()));
            }
            header.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
            if header.len() >= MAX_HEADER {
                return Err(VideoError::Y4m("header line too long".into()));
            }
        }
        let (mut w, mut h) = (0u64, 0u64);
        for field in header.trim_ascii_end().split(|&b| b == b' ').skip(1) {
            let number = || -> u64 {
                std::str::from_utf8(&field[1..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX)
            };
            match field.first() {
                Some(b'W') => w = number(),
                Some(b'H') => h = number(),
                _ => {}
            }
        }
        check_size(w, h)?;
        let chained: Box<dyn Read + Send> = Box::new(Cursor::new(header).chain(reader));
        let limits = y4m::Limits {
            bytes: (MAX_PIXELS * 3 / 2) as usize,
        };
        let decoder = y4m::Decoder::new_with_limits(chained, limits).map_err(y4m_err)?;
        match decoder.get_colorspace() {
            y4m::Colorspace::C420
            | y4m::Colorspace::C420jpeg
            | y4m::Colorspace::C420paldv
            | y4m::Colorspace::C420mpeg2 => {}
            other => {
                return Err(VideoError::UnsupportedFormat(format!(
                    "Y4M colour space {other:?}; only 8-bit 4:2:0 is supported"
                )));
            }
        }
        let rate = decoder.get_framerate();
        if rate.num == 0 || rate.den == 0 || rate.num / rate.den > 1000 {
            return Err(VideoError::Y4m(format!("frame rate {rate} out of range")));
        }
        Ok(Self {
            width: w as u32,
            height: h as u32,
            fps: rate.num as f64 / rate.den as f64,
            decoder,
        })
    }
}

impl VideoSource for Y4mSource {
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError> {
        let (w, h) = (self.width, self.height);
        let frame = match self.decoder.read_frame() {
            Ok(frame) => frame,
            Err(y4m::Error::EOF) => return Ok(false),
            Err(e) => return Err(y4m_err(e)),
        };
        let (wu, cw) = (w as usize, w as usize / 2);
        out.copy_from_planes(
            w,
            h,
            [
                frame.get_y_plane(),
                frame.get_u_plane(),
                frame.get_v_plane(),
            ],
            [wu, cw, cw],
        )?;
        out.capture = Instant::now();
        Ok(true)
    }

    fn frame_rate(&self) -> f64 {
        self.fps
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

/// Records pictures to a Y4M file (`C420`), each picture once. The header takes the first
/// picture's size; pictures of another size are scaled to it.
pub struct Y4mSink {
    writer: Box<dyn Write + Send>,
    fps: u32,
    size: Option<(u32, u32)>,
    scratch: Option<VideoFrame>,
    frames: u64,
}

impl std::fmt::Debug for Y4mSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Y4mSink")
            .field("size", &self.size)
            .field("fps", &self.fps)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl Y4mSink {
    /// Creates (or truncates) a Y4M file; `fps` goes into its header.
    pub fn create(path: impl AsRef<Path>, fps: u32) -> Result<Self, VideoError> {
        Ok(Self::new(BufWriter::new(File::create(path)?), fps))
    }

    /// Writes Y4M to any writer (buffer it).
    pub fn new(writer: impl Write + Send + 'static, fps: u32) -> Self {
        Self {
            writer: Box::new(writer),
            fps: fps.max(1),
            size: None,
            scratch: None,
            frames: 0,
        }
    }

    /// Pictures written.
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

impl VideoSink for Y4mSink {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        let size = match self.size {
            Some(size) => size,
            None => {
                let (w, h) = frame.size();
                writeln!(
                    self.writer,
                    "YUV4MPEG2 W{w} H{h} F{}:1 Ip A1:1 C420",
                    self.fps
                )?;
                *self.size.insert((w, h))
            }
        };
        let picture = if frame.size() == size {
            frame
        } else {
            let scratch = match &mut self.scratch {
                Some(s) => s,
                None => self.scratch.insert(VideoFrame::black(size.0, size.1)?),
            };
            frame.scale_into(scratch);
            &*scratch
        };
        self.writer.write_all(b"FRAME\n")?;
        for i in 0..3 {
            let (_, rows) = picture.plane_size(i);
            for row in 0..rows {
                self.writer.write_all(picture.row(i, row))?;
            }
        }
        self.frames += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), VideoError> {
        self.writer.flush()?;
        Ok(())
    }
}
