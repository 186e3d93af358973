//! WAV file source and sink (hound).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::resample::StreamResampler;
use super::sink::AudioSink;
use super::source::AudioSource;
use super::{MediaError, SAMPLE_RATE};

/// Most channels a WAV source accepts (they are mixed down to mono).
const MAX_CHANNELS: u16 = 8;
/// Input frames read per refill.
const READ_CHUNK: usize = 1024;

/// Errors reading or writing WAV files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file could not be opened or parsed.
    #[error("cannot read WAV file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What hound said.
        source: hound::Error,
    },
    /// The file parsed but its format is not supported.
    #[error("unsupported WAV format in {path}: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        what: String,
    },
    /// Reading or writing samples failed.
    #[error("WAV I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What hound said.
        source: hound::Error,
    },
}

enum Format {
    Int(u16),
    Float,
}

/// Reads a WAV file of any rate, mono or stereo (up to 8 channels, integer 8-32 bit or
/// 32-bit float) and yields 48 kHz mono frames.
pub struct WavSource {
    path: PathBuf,
    reader: hound::WavReader<BufReader<File>>,
    format: Format,
    channels: usize,
    resampler: StreamResampler,
    mono: Vec<f32>,
    done: bool,
    flushed: bool,
}

impl std::fmt::Debug for WavSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSource")
            .field("path", &self.path)
            .finish()
    }
}

impl WavSource {
    /// Opens `path` and checks its format.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MediaError> {
        let path = path.as_ref().to_path_buf();
        let reader = hound::WavReader::open(&path).map_err(|source| WavError::Open {
            path: path.clone(),
            source,
        })?;
        let spec = reader.spec();
        let unsupported = |what: String| WavError::Unsupported {
            path: path.clone(),
            what,
        };
        if spec.channels == 0 || spec.channels > MAX_CHANNELS {
            return Err(unsupported(format!("{} channels", spec.channels)).into());
        }
        if !(1_000..=384_000).contains(&spec.sample_rate) {
            return Err(unsupported(format!("sample rate {} Hz", spec.sample_rate)).into());
        }
        let format = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, b @ 8..=32) => Format::Int(b),
            (hound::SampleFormat::Float, 32) => Format::Float,
            (f, b) => return Err(unsupported(format!("{f:?} {b}-bit samples")).into()),
        };
        let resampler = StreamResampler::new(spec.sample_rate, SAMPLE_RATE, 16 * 1024)?;
        Ok(Self {
            path,
            reader,
            format,
            channels: usize::from(spec.channels),
            resampler,
            mono: Vec::with_capacity(READ_CHUNK),
            done: false,
            flushed: false,
        })
    }

    /// Reads up to READ_CHUNK input frames, mixed to mono, into the resampler.
    fn refill(&mut self) -> Result<(), MediaError> {
        self.mono.clear();
        let ch = self.channels;
        let mut acc = 0.0f32;
        let mut k = 0usize;
        let io = |path: &PathBuf, source| WavError::Io {
            path: path.clone(),
            source,
        };
        match self.format {
            Format::Int(bits) => {
                let scale = 1.0 / (1u64 << (bits - 1)) as f32;
                for s in self.reader.samples::<i32>().take(READ_CHUNK * ch) {
                    acc += s.map_err(|e| io(&self.path, e))? as f32 * scale;
                    k += 1;
                    if k == ch {
                        self.mono.push(acc / ch as f32);
                        acc = 0.0;
                        k = 0;
                    }
                }
            }
            Format::Float => {
                for s in self.reader.samples::<f32>().take(READ_CHUNK * ch) {
                    let v = s.map_err(|e| io(&self.path, e))?;
                    acc += if v.is_finite() {
                        v.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    };
                    k += 1;
                    if k == ch {
                        self.mono.push(acc / ch as f32);
                        acc = 0.0;
                        k = 0;
                    }
                }
            }
        }
        if self.mono.is_empty() {
            self.done = true;
        }
        self.resampler.push(&self.mono)
    }
}

impl AudioSource for WavSource {
    fn read_frame(&mut self, out: &mut [f32]) -> Result<bool, MediaError> {
        while self.resampler.available() < out.len() {
            if self.done {
                if !self.flushed {
                    self.flushed = true;
                    self.resampler.flush()?;
                    continue;
                }
                // Last partial frame: pad with silence.
                let n = self.resampler.available();
                if n == 0 {
                    return Ok(false);
                }
                out.fill(0.0);
                self.resampler.pull(&mut out[..n]);
                return Ok(true);
            }
            self.refill()?;
        }
        Ok(self.resampler.pull(out))
    }
}

/// Writes 48 kHz mono 16-bit WAV.
pub struct WavSink {
    path: PathBuf,
    writer: Option<hound::WavWriter<std::io::BufWriter<File>>>,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink").field("path", &self.path).finish()
    }
}

impl WavSink {
    /// Creates (truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, MediaError> {
        let path = path.as_ref().to_path_buf();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(&path, spec).map_err(|source| WavError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            writer: Some(writer),
        })
    }
}

impl AudioSink for WavSink {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        for &s in frame {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            w.write_sample(v).map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), MediaError> {
        if let Some(w) = self.writer.take() {
            w.finalize().map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("closing WAV sink: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_44k_file_comes_out_48k_mono() {
        let dir = std::env::temp_dir().join(format!("sotto-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("in.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for i in 0..44_100 {
            let v = (0.5 * (std::f64::consts::TAU * 440.0 * i as f64 / 44_100.0).sin() * 32767.0)
                as i16;
            w.write_sample(v).unwrap();
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        let mut src = WavSource::open(&p).unwrap();
        let mut frame = [0.0f32; 960];
        let mut frames = 0;
        let out = dir.join("out.wav");
        let mut sink = WavSink::create(&out).unwrap();
        while src.read_frame(&mut frame).unwrap() {
            frames += 1;
            sink.write_frame(&frame).unwrap();
        }
        sink.finish().unwrap();
        assert!((49..=52).contains(&frames), "{frames}");
        let r = hound::WavReader::open(&out).unwrap();
        assert_eq!(r.spec().sample_rate, 48_000);
        assert_eq!(r.spec().channels, 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let e = WavSource::open("/nonexistent/x.wav").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.wav"), "{e}");
        let dir = std::env::temp_dir().join(format!("sotto-wav-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.wav");
        std::fs::write(&p, b"RIFF\x10\x00\x00\x00WAVEgarbage").unwrap();
        assert!(WavSource::open(&p).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
