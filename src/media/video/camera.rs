//! Cameras (V4L2 on Linux): listing, YUYV conversion and capture.

use std::path::{Path, PathBuf};

use super::{VideoError, VideoFrame};

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
#[allow(dead_code)] // used by CameraSource (next commit)
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
