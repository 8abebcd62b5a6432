//! The default rule for what makes a valid username.

/// The reference's username rule.
///
/// A valid username:
/// - has 2 to 32 characters, each an ASCII letter, a digit, or one of `.`, `-`, `@` and `_`;
/// - starts with a letter and ends with a letter or digit;
/// - never has two of `.`, `-`, `@`, `_` in a row.
///
/// ```
/// use emitter_core::is_valid_username;
///
/// assert!(is_valid_username("simon"));
/// assert!(is_valid_username("s.karman@example"));
/// assert!(!is_valid_username("a"));
/// assert!(!is_valid_username("1simon"));
/// assert!(!is_valid_username("simon_"));
/// assert!(!is_valid_username("si__mon"));
/// ```
pub fn is_valid_username(username: &str) -> bool {
    let bytes = username.as_bytes();
    let special = |b: u8| matches!(b, b'.' | b'-' | b'@' | b'_');
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    (2..=32).contains(&bytes.len())
        && first.is_ascii_alphabetic()
        && last.is_ascii_alphanumeric()
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || special(b))
        && !bytes.windows(2).any(|pair| special(pair[0]) && special(pair[1]))
}

#[cfg(test)]
mod tests {
    use super::is_valid_username;

    #[test]
    fn length_boundaries() {
        assert!(!is_valid_username(""));
        assert!(!is_valid_username("a"));
        assert!(is_valid_username("ab"));
        assert!(is_valid_username(&"a".repeat(32)));
        assert!(!is_valid_username(&"a".repeat(33)));
    }

    #[test]
    fn first_and_last_characters() {
        assert!(is_valid_username("a1"));
        assert!(!is_valid_username("1a"));
        assert!(!is_valid_username(".a"));
        assert!(!is_valid_username("a."));
        assert!(!is_valid_username("a-"));
        assert!(is_valid_username("Zz"));
    }

    #[test]
    fn special_characters() {
        for special in ['.', '-', '@', '_'] {
            assert!(is_valid_username(&format!("a{special}b")), "{special}");
            for other in ['.', '-', '@', '_'] {
                assert!(!is_valid_username(&format!("a{special}{other}b")));
            }
        }
        assert!(is_valid_username("a.b.c-d@e_f"));
    }

    #[test]
    fn other_characters_are_refused() {
        for name in ["bot 1", "sim+on", "sïmon", "simon!", "ab\u{0}", "日本"] {
            assert!(!is_valid_username(name), "{name}");
        }
    }

    #[test]
    fn javascript_built_in_names_are_ordinary_names() {
        for name in ["constructor", "toString", "hasOwnProperty", "__proto__x", "valueOf"] {
            assert_eq!(is_valid_username(name), !name.starts_with('_'), "{name}");
        }
    }
}
