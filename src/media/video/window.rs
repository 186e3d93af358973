//! A window that shows received video (`--video-window`), through minifb on X11.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{VideoError, VideoFrame, VideoSink};

/// Initial window size (the picture is scaled to the window, keeping its aspect ratio).
const INITIAL: (usize, usize) = (640, 360);
/// How often the window handles its events while no picture arrives.
const IDLE: Duration = Duration::from_millis(50);

/// Shows pictures in a desktop window (X11). The window lives on its own thread; pictures
/// reach it through a one-slot queue, and a picture that arrives while the window is still
/// drawing the previous one replaces nothing and is dropped (counted in
/// [`WindowSink::dropped`]), so a slow display never holds up the call. Closing the window
/// only stops the display; dropping the sink closes the window.
pub struct WindowSink {
    tx: Option<SyncSender<VideoFrame>>,
    thread: Option<JoinHandle<()>>,
    dropped: u64,
}

impl std::fmt::Debug for WindowSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowSink")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl WindowSink {
    /// Opens a window with this title. Fails if there is no display (e.g. `DISPLAY` unset).
    pub fn open(title: &str) -> Result<Self, VideoError> {
        let (tx, rx) = sync_channel::<VideoFrame>(1);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let title = title.to_owned();
        let thread = std::thread::Builder::new()
            .name("sotto-video-window".into())
            .spawn(move || show(&title, &rx, &ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                tx: Some(tx),
                thread: Some(thread),
                dropped: 0,
            }),
            Ok(Err(detail)) => {
                let _ = thread.join();
                Err(VideoError::Io(std::io::Error::other(format!(
                    "cannot open a video window: {detail}"
                ))))
            }
            Err(_) => Err(VideoError::Io(std::io::Error::other(
                "cannot open a video window: its thread ended",
            ))),
        }
    }

    /// Pictures not shown because the window was busy or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The window thread: creates the window, then shows what arrives until the sink is gone.
fn show(title: &str, rx: &Receiver<VideoFrame>, ready: &SyncSender<Result<(), String>>) {
    let options = minifb::WindowOptions {
        resize: true,
        scale_mode: minifb::ScaleMode::AspectRatioStretch,
        ..minifb::WindowOptions::default()
    };
    let mut window = match minifb::Window::new(title, INITIAL.0, INITIAL.1, options) {
        Ok(w) => {
            let _ = ready.send(Ok(()));
            w
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut pixels = Vec::new();
    while window.is_open() {
        match rx.recv_timeout(IDLE) {
            Ok(frame) => {
                frame.to_xrgb(&mut pixels);
                let (w, h) = (frame.width() as usize, frame.height() as usize);
                if window.update_with_buffer(&pixels, w, h).is_err() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => window.update(),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

impl VideoSink for WindowSink {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        if let Some(tx) = &self.tx {
            match tx.try_send(frame.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => self.dropped += 1,
                Err(TrySendError::Disconnected(_)) => {
                    // The user closed the window: stop sending to it.
                    self.dropped += 1;
                    self.tx = None;
                }
            }
        } else {
            self.dropped += 1;
        }
        Ok(())
    }
}

impl Drop for WindowSink {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs where an X display is available (e.g. under `Xvfb :99` with DISPLAY=:99);
    /// elsewhere it checks that opening fails with a clear error instead.
    #[test]
    fn window_shows_frames_or_fails_clearly_without_a_display() {
        match WindowSink::open("sotto test") {
            Ok(mut sink) => {
                let f = VideoFrame::black(640, 360).unwrap();
                for _ in 0..10 {
                    sink.write_frame(&f).unwrap();
                }
                sink.finish().unwrap();
                drop(sink);
            }
            Err(e) => {
                assert!(
                    std::env::var_os("SOTTO_REQUIRE_DISPLAY").is_none_or(|v| v != "1"),
                    "SOTTO_REQUIRE_DISPLAY=1 but no window: {e}"
                );
                assert!(
                    std::env::var_os("DISPLAY").is_none(),
                    "display set but: {e}"
                );
                assert!(e.to_string().contains("video window"), "{e}");
            }
        }
    }
}
