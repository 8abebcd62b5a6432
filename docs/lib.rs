//! The book's chapters, compiled.
//!
//! Every chapter in `src/` is plain Markdown with its code written inline, so that it reads as it is on a code host
//! and needs no build. This crate (never published, empty outside tests) makes `cargo test` check that code:
//!
//! - Each chapter is the documentation of one hidden item below, so every ```` ```rust ```` block in it is a doctest:
//!   compiled, and run unless it is marked `no_run` (a server that listens until Ctrl-C). Lines that start with `# `
//!   are setup that rustdoc and mdBook both hide.
//! - A block right after a `<!-- from: PATH -->` line shows code of the file at `PATH` (relative to the repository
//!   root), where the examples' own tests run it. The tests at the bottom check that the block's visible lines are
//!   still in that file, word for word, so the book and the example cannot drift apart.

#[doc = include_str!("src/introduction.md")]
#[cfg(doctest)]
pub struct Introduction;

#[doc = include_str!("src/getting-started.md")]
#[cfg(doctest)]
pub struct GettingStarted;

#[doc = include_str!("src/concepts.md")]
#[cfg(doctest)]
pub struct Concepts;

#[doc = include_str!("src/tic-tac-toe.md")]
#[cfg(doctest)]
pub struct TicTacToe;

#[doc = include_str!("src/cluster.md")]
#[cfg(doctest)]
pub struct Cluster;

#[doc = include_str!("src/shared-state.md")]
#[cfg(doctest)]
pub struct SharedState;

#[doc = include_str!("src/examples.md")]
#[cfg(doctest)]
pub struct Examples;

#[doc = include_str!("src/crate-map.md")]
#[cfg(doctest)]
pub struct CrateMap;

#[doc = include_str!("src/protocol.md")]
#[cfg(doctest)]
pub struct Protocol;

#[doc = include_str!("src/server-api.md")]
#[cfg(doctest)]
pub struct ServerApi;

#[doc = include_str!("src/authentication.md")]
#[cfg(doctest)]
pub struct Authentication;

#[doc = include_str!("src/axum.md")]
#[cfg(doctest)]
pub struct Axum;

#[doc = include_str!("src/client.md")]
#[cfg(doctest)]
pub struct Client;

#[doc = include_str!("src/from-krmx-server.md")]
#[cfg(doctest)]
pub struct FromKrmxServer;

#[doc = include_str!("src/limits.md")]
#[cfg(doctest)]
pub struct Limits;

#[doc = include_str!("src/operations.md")]
#[cfg(doctest)]
pub struct Operations;

#[doc = include_str!("src/performance.md")]
#[cfg(doctest)]
pub struct Performance;

#[doc = include_str!("src/capacity.md")]
#[cfg(doctest)]
pub struct Capacity;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The repository root.
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// A fenced code block that a `<!-- from: PATH -->` line says is copied from `PATH`.
    struct Copied {
        chapter: String,
        line: usize,
        from: String,
        /// The block's lines as a reader sees them: in a Rust block, without the hidden `# ` lines.
        visible: String,
    }

    /// Whether rustdoc and mdBook hide this line of a Rust block.
    fn is_hidden(line: &str) -> bool {
        let line = line.trim_start();
        line == "#" || line.starts_with("# ")
    }

    fn copied_blocks(chapter: &str, text: &str) -> Vec<Copied> {
        let mut blocks = Vec::new();
        let mut lines = text.lines().enumerate();
        while let Some((index, line)) = lines.next() {
            let Some(from) = line
                .trim()
                .strip_prefix("<!-- from:")
                .and_then(|rest| rest.strip_suffix("-->"))
            else {
                continue;
            };
            let fence = lines.next().map(|(_, fence)| fence.trim()).unwrap_or_default();
            assert!(
                fence.starts_with("```"),
                "{chapter}:{}: a `from:` line must be right above a code block",
                index + 1
            );
            let rust = fence.trim_start_matches('`').starts_with("rust");
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, line)| line)
                .take_while(|line| line.trim() != "```")
                .filter(|line| !(rust && is_hidden(line)))
                .collect();
            blocks.push(Copied {
                chapter: chapter.to_owned(),
                line: index + 2,
                from: from.trim().to_owned(),
                visible: body.join("\n"),
            });
        }
        blocks
    }

    #[test]
    fn copied_samples_match_their_files() {
        let mut checked = 0;
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(root().join("docs/src")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|extension| extension != "md") {
                continue;
            }
            let chapter = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            for block in copied_blocks(&chapter, &text) {
                let source = std::fs::read_to_string(root().join(&block.from))
                    .unwrap_or_else(|error| panic!("{}:{}: {}: {error}", block.chapter, block.line, block.from));
                assert!(
                    !block.visible.trim().is_empty(),
                    "{}:{}: empty",
                    block.chapter,
                    block.line
                );
                if !source.contains(&block.visible) {
                    stale.push(format!("{}:{} is not in {}", block.chapter, block.line, block.from));
                }
                checked += 1;
            }
        }
        assert!(
            stale.is_empty(),
            "samples that differ from their files:\n{}",
            stale.join("\n")
        );
        assert!(checked > 0, "no `<!-- from: PATH -->` samples found");
    }

    #[test]
    fn every_chapter_is_a_doctest() {
        let lib = include_str!("lib.rs");
        for entry in std::fs::read_dir(root().join("docs/src")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !name.ends_with(".md") || name == "SUMMARY.md" {
                continue;
            }
            let wired = format!("#[doc = include_str!(\"src/{name}\")]");
            assert!(
                lib.contains(&wired),
                "{name} is not wired in docs/lib.rs: add `{wired}` on a hidden item"
            );
        }
    }

    /// The book's crate map names every file of emitter-core's `src/`, so that it cannot fall behind the tree.
    #[test]
    fn the_crate_map_names_every_core_file() {
        let map = std::fs::read_to_string(root().join("docs/src/crate-map.md")).unwrap();
        let src = root().join("crates/emitter-core/src");
        let mut missing = Vec::new();
        let mut folders = vec![src.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if !map.contains(&format!("`{name}/`")) {
                        missing.push(format!("{name}/"));
                    }
                    folders.push(path);
                } else if name.ends_with(".rs") && !map.contains(&format!("`{name}`")) {
                    missing.push(path.strip_prefix(&src).unwrap().display().to_string());
                }
            }
        }
        assert!(missing.is_empty(), "docs/src/crate-map.md does not name {missing:?}");
    }

    /// A sequencer that decides nothing: enough to make a server a node, to see a node's metrics.
    struct Nowhere;

    impl emitter_core::cluster::Sequencer for Nowhere {
        fn node(&self) -> &str {
            "nowhere"
        }
        fn owns(&self, _: &emitter_core::cluster::LinkAddr) -> bool {
            false
        }
        fn submit(
            &self,
            _: emitter_core::cluster::Change,
        ) -> Result<Vec<emitter_core::cluster::LogEntry>, emitter_core::cluster::Refused> {
            Err(emitter_core::cluster::Refused::Unavailable("nowhere".to_owned()))
        }
        fn entries_after(&self, _: u64) -> Result<Vec<emitter_core::cluster::LogEntry>, String> {
            Ok(Vec::new())
        }
        fn publish_broadcast(&self, _: u64, _: Option<&str>, _: &emitter_core::protocol::Frame) {}
        fn publish_send(
            &self,
            _: &emitter_core::cluster::LinkAddr,
            _: &str,
            _: u64,
            _: &emitter_core::protocol::Frame,
        ) {
        }
        fn publish_kept(&self, _: &str, _: u64, _: &emitter_core::protocol::Frame) {}
    }

    /// The `(name, type)` of every metric a scrape holds, from its `# TYPE` lines.
    fn types_in(text: &str) -> std::collections::BTreeSet<(String, String)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect()
    }

    /// The `(name, type)` of every row of the chapter's metric tables: rows whose first cell is a `krmx_` name (its
    /// labels in braces dropped).
    fn documented(chapter: &str) -> Vec<(String, String)> {
        chapter
            .lines()
            .filter_map(|line| line.strip_prefix("| `krmx_"))
            .filter_map(|row| {
                let (name, rest) = row.split_once('`')?;
                let name = name.split('{').next()?;
                let kind = rest.split('|').nth(1)?.trim();
                Some((format!("krmx_{name}"), kind.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_operations_chapter_lists_exactly_the_metrics_a_node_exposes() {
        let chapter = std::fs::read_to_string(root().join("docs/src/operations.md")).unwrap();
        // A node exposes every metric a server does, and the cluster's.
        let server = emitter_core::Server::new();
        emitter_core::cluster::ClusterHost::of(&server)
            .install(std::sync::Arc::new(Nowhere), 0, Vec::new())
            .unwrap();
        let text = server.metrics_text();
        let exposed = types_in(&text);
        assert!(exposed.len() >= 20, "{text}");
        let rows = documented(&chapter);
        let listed: std::collections::BTreeSet<(String, String)> = rows.iter().cloned().collect();
        assert_eq!(listed.len(), rows.len(), "a metric is listed twice: {rows:?}");
        let missing: Vec<_> = exposed.difference(&listed).collect();
        let extra: Vec<_> = listed.difference(&exposed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "operations.md's tables and the server's metrics differ (name, type):\n  not in the book: \
             {missing:?}\n  not exposed: {extra:?}"
        );
        // A server that is not a node has no cluster metrics.
        let plain = types_in(&emitter_core::Server::new().metrics_text());
        assert!(plain.iter().all(|(name, _)| !name.starts_with("krmx_cluster_")));
        assert_eq!(
            plain.len()
                + rows
                    .iter()
                    .filter(|(name, _)| name.starts_with("krmx_cluster_"))
                    .count(),
            exposed.len()
        );
    }

    #[test]
    fn hidden_lines_are_not_copied() {
        let text = "<!-- from: x.rs -->\n```rust\n# use a::B;\nfn f() {}\n#[derive(Debug)]\nstruct S;\n#\n```\n";
        let blocks = copied_blocks("t.md", text);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].visible, "fn f() {}\n#[derive(Debug)]\nstruct S;");
        assert_eq!(blocks[0].line, 2);
    }
}
