//! Peer names as people see them: one canonical form for showing and pinning, a confusable
//! skeleton for comparing, and a mixed-script flag.
//!
//! A name is chosen by the peer (or by whoever runs the signaling server), so it must never be
//! trusted as it arrives. Two names that *look* alike must compare alike: "bob", "BOB", "ｂｏｂ"
//! (full width) and "bоb" (Cyrillic о) all share one [`skeleton`].
//!
//! - [`canonical`]: NFKC, Unicode default case folding, NFKC again, invisible (default
//!   ignorable) characters removed. This is the name that is shown and pinned.
//! - [`skeleton`]: the UTS #39 confusable skeleton of the canonical form. Not for display; two
//!   names are confusable exactly when their skeletons are equal.
//! - [`is_mixed_script`]: the name mixes scripts (UTS #39 resolved script set is empty), as
//!   lookalikes usually do.
//!
//! ```
//! use sotto::names;
//!
//! assert_eq!(names::canonical("ＢＯＢ"), "bob");
//! // Cyrillic "о" looks like Latin "o": same skeleton, and the name is flagged.
//! assert!(names::confusable("bоb", "bob"));
//! assert!(names::is_mixed_script("bоb"));
//! assert!(!names::confusable("bob", "rob"));
//! ```

use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;

/// The form of `raw` that is shown and pinned: NFKC, case folded, invisible characters removed.
pub fn canonical(raw: &str) -> String {
    let folded = caseless::default_case_fold_str(&raw.nfkc().collect::<String>());
    folded.nfkc().filter(|&c| !is_invisible(c)).collect()
}

/// The UTS #39 confusable skeleton of `raw`'s canonical form: equal for names that look alike.
pub fn skeleton(raw: &str) -> String {
    unicode_security::skeleton(&canonical(raw)).collect()
}

/// Whether `raw` mixes writing systems (for example Latin with Cyrillic), which a name that
/// imitates another usually does. Digits, spaces and punctuation belong to every script.
pub fn is_mixed_script(raw: &str) -> bool {
    !canonical(raw).as_str().is_single_script()
}

/// Whether two names look alike (equal skeletons).
pub fn confusable(a: &str, b: &str) -> bool {
    skeleton(a) == skeleton(b)
}

/// A default-ignorable character (zero-width, bidi control, variation selector, ...): the
/// skeleton algorithm drops exactly these, so a character whose skeleton is empty is one.
fn is_invisible(c: char) -> bool {
    let mut buf = [0u8; 4];
    unicode_security::skeleton(c.encode_utf8(&mut buf))
        .next()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookalikes_share_a_skeleton() {
        for name in [
            "bob",
            "BOB",
            "Bob",
            "ｂｏｂ",
            "bоb",
            "b\u{200b}ob",
            "\u{202e}bob",
        ] {
            assert_eq!(skeleton(name), skeleton("bob"), "{name:?}");
        }
        assert!(confusable("аliсе", "alice"));
        assert!(!confusable("bob", "rob"));
        assert!(!confusable("alice", "alicia"));
    }

    #[test]
    fn canonical_is_what_people_see() {
        assert_eq!(canonical("ＢＯＢ"), "bob");
        assert_eq!(canonical("Straße"), "strasse");
        assert_eq!(canonical("a\u{200b}l\u{2066}ice"), "alice");
        // Cyrillic stays Cyrillic: canonical is for display, the skeleton is for comparing.
        assert_eq!(canonical("bоb"), "b\u{43e}b");
        assert_eq!(canonical("Zoë"), canonical("Zoe\u{308}"));
    }

    #[test]
    fn mixed_scripts_are_flagged() {
        assert!(is_mixed_script("bоb"));
        assert!(is_mixed_script("аliсе"));
        assert!(!is_mixed_script("bob"));
        assert!(!is_mixed_script("Борис"));
        assert!(!is_mixed_script("bob 2 (laptop)"));
        assert!(!is_mixed_script("ｂｏｂ"));
        assert!(!is_mixed_script("山田太郎"));
    }
}
