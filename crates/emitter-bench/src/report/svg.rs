//! The start of an SVG plot, shared by the report's plots.

use std::fmt::Write as _;

/// An SVG document of `width` × `height` on white, with `title` at its top left; the caller adds the rest and closes
/// it with `</svg>`.
pub(super) fn svg_start(width: f64, height: f64, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{title}</text>"#
    );
    out
}
