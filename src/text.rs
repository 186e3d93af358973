//! Text from outside (a peer, a signaling server, a device driver) made safe to print.
//!
//! A peer's name or a server's error message can carry terminal escape sequences (clear the
//! screen, move the cursor, print a fake "verified"), bidi overrides that reorder what is shown,
//! or invisible characters. [`Printable`] shows every control and format character as
//! `\u{..}` and leaves all other text as it is; wrap outside text in it wherever it reaches a
//! terminal or a log. [`EscapingWriter`] does the same for a whole log stream.
//!
//! ```
//! use sotto::text::Printable;
//!
//! let hostile = "bob\u{1b}[2J\u{202e}";
//! assert_eq!(Printable(hostile).to_string(), "bob\\u{1b}[2J\\u{202e}");
//! ```

use std::fmt::{self, Write as _};
use std::io;

/// Whether `c` must not reach a terminal as is: Unicode general category Cc (C0 and C1
/// controls, DEL) or Cf (format characters: bidi controls, zero-width characters, BOM, tags,
/// ...), plus the line and paragraph separators (Zl, Zp), which break lines like a newline.
pub fn is_unprintable(c: char) -> bool {
    matches!(
        c,
        // Cc
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Cf (Unicode 16)
        | '\u{ad}'
        | '\u{600}'..='\u{605}'
        | '\u{61c}'
        | '\u{6dd}'
        | '\u{70f}'
        | '\u{890}'..='\u{891}'
        | '\u{8e2}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{110bd}'
        | '\u{110cd}'
        | '\u{13430}'..='\u{1343f}'
        | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0001}'
        | '\u{e0020}'..='\u{e007f}'
        // Zl, Zp
        | '\u{2028}'..='\u{2029}'
    )
}

/// Displays a string from outside with its control and format characters escaped as
/// `\u{..}` (see [`is_unprintable`]); everything else, including non-Latin scripts and
/// backslashes, is shown unchanged.
///
/// ```
/// use sotto::text::Printable;
/// let name = "mallory\u{1b}[2J\u{202e}edoc";
/// assert_eq!(Printable(name).to_string(), "mallory\\u{1b}[2J\\u{202e}edoc");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_unprintable(c)) {
            f.write_str(&rest[..at])?;
            write!(f, "\\u{{{:x}}}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Whether `s` has nothing [`Printable`] would escape.
pub fn is_printable(s: &str) -> bool {
    !s.chars().any(is_unprintable)
}

/// An `io::Write` for log output that escapes, like [`Printable`], every control and format
/// character except the newline ending each write (a log formatter writes one event per
/// call), so no logged field, whoever formatted it, can move the cursor or fake a log line.
/// Invalid UTF-8 is shown as U+FFFD.
#[derive(Debug)]
pub struct EscapingWriter<W>(pub W);

impl<W: io::Write> io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, newline) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let mut out = String::with_capacity(text.len() + 16);
        // Writing to a String cannot fail.
        let _ = write!(out, "{}{newline}", Printable(body));
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn shown(s: &str) -> String {
        Printable(s).to_string()
    }

    #[test]
    fn ansi_csi_and_osc_sequences_are_escaped() {
        // Clear screen, cursor home, colour: CSI.
        assert_eq!(
            shown("a\x1b[2J\x1b[H\x1b[32mb"),
            "a\\u{1b}[2J\\u{1b}[H\\u{1b}[32mb"
        );
        // Window title and hyperlink: OSC, ended by BEL or ST.
        assert_eq!(
            shown("\x1b]0;owned\x07\x1b]8;;http://x\x1b\\y"),
            "\\u{1b}]0;owned\\u{7}\\u{1b}]8;;http://x\\u{1b}\\y"
        );
        // The 8-bit forms (C1): CSI, OSC, ST.
        assert_eq!(shown("\u{9b}2J\u{9d}\u{9c}"), "\\u{9b}2J\\u{9d}\\u{9c}");
        // Carriage return, backspace, newline, tab, DEL, NUL.
        assert_eq!(
            shown("ok\r\x08\n\t\x7f\0"),
            "ok\\u{d}\\u{8}\\u{a}\\u{9}\\u{7f}\\u{0}"
        );
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_escaped() {
        // Right-to-left override turns "edoc" around on screen.
        assert_eq!(shown("code \u{202e}1234"), "code \\u{202e}1234");
        for c in [
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{61c}',
            '\u{feff}',
            '\u{ad}',
            '\u{2060}',
            '\u{e0041}',
            '\u{2028}',
            '\u{2029}',
        ] {
            let s = format!("a{c}b");
            assert_eq!(shown(&s), format!("a\\u{{{:x}}}b", u32::from(c)), "{c:?}");
            assert!(!is_printable(&s));
        }
    }

    #[test]
    fn other_text_is_unchanged() {
        for s in [
            "",
            "alice",
            "Zoë Ångström",
            "日本語の名前",
            "שלום",
            "مرحبا",
            "e\u{301}",
            "🙂",
            "back\\slash \\u{1b}",
            "0421 7736",
        ] {
            assert_eq!(shown(s), s);
            assert!(is_printable(s));
        }
    }

    #[test]
    fn escaping_twice_changes_nothing_more() {
        let once = shown("\x1b[2J\u{202e}x");
        assert_eq!(shown(&once), once);
    }

    #[test]
    fn the_log_writer_keeps_only_the_final_newline() {
        let mut w = EscapingWriter(Vec::new());
        w.write_all(b"WARN peer=\x1b[2J\xe2\x80\xae line\nfake line\n")
            .unwrap();
        w.write_all(b"no newline").unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert_eq!(
            out,
            "WARN peer=\\u{1b}[2J\\u{202e} line\\u{a}fake line\nno newline"
        );
    }
}
