//! Which client protocol versions a server accepts.

/// The protocol version this server speaks, as `major.minor`. Patch versions do not matter on the wire.
pub const PROTOCOL_VERSION: (u64, u64) = (0, 6);

/// The versions a server accepts from clients, by major and minor number.
///
/// Krmx 0.5 and 0.6 are identical on the wire, so both are accepted by default. A client version is read as
/// `major.minor` followed by nothing or by `.` and anything (a patch, a pre-release tag); the numbers are compared as
/// numbers, so `0.60.1` is not `0.6`.
///
/// ```
/// use emitter_core::AcceptedVersions;
///
/// let accepted = AcceptedVersions::default();
/// assert!(accepted.accepts("0.6.10"));
/// assert!(accepted.accepts("0.5.3"));
/// assert!(accepted.accepts("0.6"));
/// assert!(!accepted.accepts("0.60.1"));
/// assert!(!accepted.accepts("10.6.10"));
/// assert!(!AcceptedVersions::only(&[(0, 6)]).accepts("0.5.3"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedVersions(Vec<(u64, u64)>);

impl AcceptedVersions {
    /// Accepts exactly the given `(major, minor)` versions.
    pub fn only(versions: &[(u64, u64)]) -> Self {
        AcceptedVersions(versions.to_vec())
    }

    /// Whether a client that says it speaks `version` may link.
    pub fn accepts(&self, version: &str) -> bool {
        parse_major_minor(version).is_some_and(|found| self.0.contains(&found))
    }

    /// The reason a client of `version` is rejected with, in the reference's words, naming every accepted version:
    /// `krmx server version mismatch (server=0.5.* || 0.6.*,client=0.4.0)` by default. With one accepted version it is
    /// the reference's sentence exactly (`server=0.6.*`); several are joined as an npm version range joins them.
    ///
    /// ```
    /// use emitter_core::AcceptedVersions;
    ///
    /// let reason = AcceptedVersions::default().mismatch_reason("0.4.0");
    /// assert_eq!(reason, "krmx server version mismatch (server=0.5.* || 0.6.*,client=0.4.0)");
    /// let reason = AcceptedVersions::only(&[(0, 6)]).mismatch_reason("0.5.3");
    /// assert_eq!(reason, "krmx server version mismatch (server=0.6.*,client=0.5.3)");
    /// ```
    pub fn mismatch_reason(&self, version: &str) -> String {
        let server = if self.0.is_empty() {
            "none".to_owned()
        } else {
            let versions: Vec<String> = self
                .0
                .iter()
                .map(|(major, minor)| format!("{major}.{minor}.*"))
                .collect();
            versions.join(" || ")
        };
        format!("krmx server version mismatch (server={server},client={version})")
    }
}

impl Default for AcceptedVersions {
    fn default() -> Self {
        AcceptedVersions(vec![(0, 5), (0, 6)])
    }
}

fn parse_major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.splitn(3, '.');
    let number = |part: Option<&str>| {
        part.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
    };
    Some((number(parts.next())?, number(parts.next())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let accepted = AcceptedVersions::default();
        for ok in ["0.6.0", "0.6.10", "0.6.101", "0.5.0", "0.6", "0.6.0-beta", "0.6."] {
            assert!(accepted.accepts(ok), "{ok}");
        }
        for bad in [
            "", "0", "0.", "0.7.0", "1.6.0", "10.6.10", "0.60.1", "0.6x", "v0.6.0", "0.-6", " 0.6.1", "0.4.9",
        ] {
            assert!(!accepted.accepts(bad), "{bad}");
        }
    }

    #[test]
    fn mismatch_wording() {
        assert_eq!(
            AcceptedVersions::default().mismatch_reason("10.6.10"),
            "krmx server version mismatch (server=0.5.* || 0.6.*,client=10.6.10)"
        );
        assert_eq!(
            AcceptedVersions::only(&[(0, 6)]).mismatch_reason("0.5.3"),
            "krmx server version mismatch (server=0.6.*,client=0.5.3)"
        );
        assert_eq!(
            AcceptedVersions::only(&[]).mismatch_reason("0.6.0"),
            "krmx server version mismatch (server=none,client=0.6.0)"
        );
    }
}
