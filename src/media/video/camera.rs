//! Cameras (V4L2 on Linux): listing, YUYV conversion and capture.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{VideoError, VideoFrame, VideoSource};

/// Where Linux lists video devices.
const SYSFS_ROOT: &str = "/sys/class/video4linux";

/// A video device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraInfo {
    /// Its name as the driver gives it (e.g. "Integrated Camera: Integrated C").
    pub name: String,
    /// Its device node, e.g. `/dev/video0`.
    pub device: PathBuf,
}

impl std::fmt::Display for CameraInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.device.display())
    }
}

/// The cameras on this machine, in device order.
pub fn list_cameras() -> Vec<CameraInfo> {
    list_cameras_in(Path::new(SYSFS_ROOT))
}

/// The cameras listed under a sysfs-like directory (`<root>/videoN/name`), in device order;
/// their nodes are `/dev/videoN`. Nodes with a non-zero `index` (a camera's second, metadata
/// node) are left out.
pub fn list_cameras_in(root: &Path) -> Vec<CameraInfo> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, CameraInfo)> = entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name();
            let file = file.to_str()?;
            let number: u32 = file.strip_prefix("video")?.parse().ok()?;
            let dir = entry.path();
            let index = std::fs::read_to_string(dir.join("index")).unwrap_or_default();
            if index.trim().parse::<u32>().is_ok_and(|i| i != 0) {
                return None;
            }
            let name = std::fs::read_to_string(dir.join("name")).ok()?;
            let name: String = name
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect();
            Some((
                number,
                CameraInfo {
                    name,
                    device: PathBuf::from(format!("/dev/{file}")),
                },
            ))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, c)| c).collect()
}

/// Picks a camera from a list: the first one, or the first whose name equals `wanted` (or,
/// failing that, contains it, ignoring case), or the one whose device path is `wanted`. The
/// error lists the cameras that exist.
pub(crate) fn pick_camera(
    cameras: &[CameraInfo],
    wanted: Option<&str>,
) -> Result<CameraInfo, VideoError> {
    let found = match wanted {
        None => cameras.first(),
        Some(w) => {
            let lower = w.to_lowercase();
            cameras
                .iter()
                .find(|c| c.name == w || c.device == Path::new(w))
                .or_else(|| {
                    cameras
                        .iter()
                        .find(|c| c.name.to_lowercase().contains(&lower))
                })
        }
    };
    found.cloned().ok_or_else(|| VideoError::CameraNotFound {
        wanted: wanted.map(str::to_owned),
        available: cameras.iter().map(ToString::to_string).collect(),
    })
}

/// A live camera (V4L2): the first capture device, or one chosen by name. It asks for I420 or
/// else YUYV (converted) near the requested size and rate; the driver's choice wins (odd
/// sizes lose their last column or row).
pub struct CameraSource {
    #[cfg(target_os = "linux")]
    capture: super::v4l2::Capture,
    size: (u32, u32),
    fps: f64,
}

impl std::fmt::Debug for CameraSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CameraSource")
            .field("size", &self.size)
            .field("fps", &self.fps)
            .finish_non_exhaustive()
    }
}

impl CameraSource {
    /// Opens the camera named `name` (None: the first one), asking for about `width` x
    /// `height` at `fps`. A missing camera gives [`VideoError::CameraNotFound`], which lists
    /// the cameras there are.
    pub fn open(name: Option<&str>, width: u32, height: u32, fps: u32) -> Result<Self, VideoError> {
        Self::open_in(Path::new(SYSFS_ROOT), name, width, height, fps)
    }

    /// As [`CameraSource::open`], with the device list read from a sysfs-like directory.
    pub fn open_in(
        root: &Path,
        name: Option<&str>,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Self, VideoError> {
        let camera = pick_camera(&list_cameras_in(root), name)?;
        Self::open_device(&camera.device, width, height, fps)
    }

    /// Opens a device node directly (e.g. `/dev/video0`).
    #[cfg(target_os = "linux")]
    pub fn open_device(
        device: &Path,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Self, VideoError> {
        let camera_err = |detail: String| VideoError::Camera {
            device: device.display().to_string(),
            detail,
        };
        let capture = super::v4l2::Capture::open(device, width, height, fps).map_err(camera_err)?;
        let size = (capture.width & !1, capture.height & !1);
        super::frame::check_size(size.0.into(), size.1.into()).map_err(|_| {
            camera_err(format!(
                "unsupported size {}x{}",
                capture.width, capture.height
            ))
        })?;
        let fps = capture.fps;
        Ok(Self { capture, size, fps })
    }

    /// Opens a device node directly; cameras are supported on Linux only.
    #[cfg(not(target_os = "linux"))]
    pub fn open_device(
        device: &Path,
        _width: u32,
        _height: u32,
        _fps: u32,
    ) -> Result<Self, VideoError> {
        Err(VideoError::Camera {
            device: device.display().to_string(),
            detail: "cameras are supported on Linux (V4L2) only".into(),
        })
    }
}

impl VideoSource for CameraSource {
    #[cfg(target_os = "linux")]
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError> {
        let (w, h) = self.size;
        let c = &self.capture;
        let (format, line, full_h) = (c.pixelformat, c.bytesperline as usize, c.height as usize);
        let device = c.device.display().to_string();
        let result = self.capture.next(|data| {
            if format == super::v4l2::FMT_YUYV {
                yuyv_to_i420(data, w, h, line.max(2 * w as usize), out)
            } else {
                // Planar I420: Y rows of `line` bytes, then U and V at half that.
                let line = line.max(w as usize);
                let cline = line / 2;
                let y_len = line * full_h;
                let c_len = cline * full_h.div_ceil(2);
                if data.len() < y_len + 2 * c_len {
                    return Err(VideoError::PlaneTooShort {
                        plane: 0,
                        len: data.len(),
                        stride: line,
                        rows: h as usize,
                    });
                }
                out.copy_from_planes(
                    w,
                    h,
                    [
                        &data[..y_len],
                        &data[y_len..y_len + c_len],
                        &data[y_len + c_len..y_len + 2 * c_len],
                    ],
                    [line, cline, cline],
                )
            }
        });
        match result {
            Ok(converted) => converted.map_err(|e| VideoError::Camera {
                device,
                detail: e.to_string(),
            })?,
            Err(detail) => return Err(VideoError::Camera { device, detail }),
        }
        out.capture = Instant::now();
        Ok(true)
    }

    #[cfg(not(target_os = "linux"))]
    fn read_frame(&mut self, _out: &mut VideoFrame) -> Result<bool, VideoError> {
        Ok(false)
    }

    fn is_live(&self) -> bool {
        true
    }

    fn frame_rate(&self) -> f64 {
        self.fps
    }

    fn size(&self) -> (u32, u32) {
        self.size
    }
}

/// Converts one packed YUYV (YUY2) picture, `stride` bytes a row, into I420 (resizing `out`).
/// Chroma of each two rows is averaged.
pub fn yuyv_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    out: &mut VideoFrame,
) -> Result<(), VideoError> {
    out.set_size(width, height)?;
    let (w, h) = (width as usize, height as usize);
    let needed = stride * (h - 1) + 2 * w;
    if stride < 2 * w || src.len() < needed {
        return Err(VideoError::PlaneTooShort {
            plane: 0,
            len: src.len(),
            stride,
            rows: h,
        });
    }
    let strides = [out.stride(0), out.stride(1), out.stride(2)];
    let [py, pu, pv] = out.planes_mut();
    for row in 0..h {
        let line = &src[row * stride..row * stride + 2 * w];
        let dst = &mut py[row * strides[0]..row * strides[0] + w];
        for (d, pair) in dst.iter_mut().zip(line.chunks_exact(2)) {
            *d = pair[0];
        }
    }
    for crow in 0..h / 2 {
        let a = &src[2 * crow * stride..2 * crow * stride + 2 * w];
        let b = &src[(2 * crow + 1) * stride..(2 * crow + 1) * stride + 2 * w];
        let du = &mut pu[crow * strides[1]..crow * strides[1] + w / 2];
        let dv = &mut pv[crow * strides[2]..crow * strides[2] + w / 2];
        for (x, (qa, qb)) in a.chunks_exact(4).zip(b.chunks_exact(4)).enumerate() {
            du[x] = (u16::from(qa[1]) + u16::from(qb[1])).div_ceil(2) as u8;
            dv[x] = (u16::from(qa[3]) + u16::from(qb[3])).div_ceil(2) as u8;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_is_not_a_camera_gives_a_clear_error() {
        let err = CameraSource::open_device(Path::new("/dev/null"), 640, 360, 30).unwrap_err();
        assert!(matches!(err, VideoError::Camera { .. }), "{err}");
        assert!(err.to_string().starts_with("camera /dev/null: "), "{err}");
        let err =
            CameraSource::open_device(Path::new("/nonexistent/video9"), 640, 360, 30).unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }

    #[test]
    fn cameras_are_picked_by_name_or_path() {
        let cams = vec![
            CameraInfo {
                name: "Integrated Camera".into(),
                device: "/dev/video0".into(),
            },
            CameraInfo {
                name: "USB Cam".into(),
                device: "/dev/video2".into(),
            },
        ];
        assert_eq!(
            pick_camera(&cams, None).unwrap().device,
            Path::new("/dev/video0")
        );
        assert_eq!(
            pick_camera(&cams, Some("USB Cam")).unwrap().device,
            Path::new("/dev/video2")
        );
        assert_eq!(
            pick_camera(&cams, Some("usb")).unwrap().device,
            Path::new("/dev/video2")
        );
        assert_eq!(
            pick_camera(&cams, Some("/dev/video2")).unwrap().name,
            "USB Cam"
        );
        assert!(matches!(
            pick_camera(&[], None),
            Err(VideoError::CameraNotFound { .. })
        ));
    }

    #[test]
    fn yuyv_converts_with_chroma_averaged_over_two_rows() {
        // 4x2 picture, stride 10 (2 bytes padding).
        let src = [
            10, 100, 11, 200, 12, 102, 13, 202, 0, 0, //
            20, 110, 21, 210, 22, 112, 23, 212, 0, 0,
        ];
        let mut out = VideoFrame::black(2, 2).unwrap();
        yuyv_to_i420(&src, 4, 2, 10, &mut out).unwrap();
        assert_eq!(out.y(), &[10, 11, 12, 13, 20, 21, 22, 23]);
        assert_eq!(out.u(), &[105, 107]);
        assert_eq!(out.v(), &[205, 207]);
        assert!(yuyv_to_i420(&src[..17], 4, 2, 10, &mut out).is_err());
        assert!(yuyv_to_i420(&src, 4, 2, 6, &mut out).is_err());
        assert!(yuyv_to_i420(&src, 3, 2, 10, &mut out).is_err());
    }
}
