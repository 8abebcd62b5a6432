//! The import graph of each library crate has no cycle: "no module cycles", from the developers' guide.
//!
//! A file depends on another when it names an item the other defines: through a `use`, or a path in its code
//! (`crate::x::Y`, `super::Y`, `child::Y`, or a path through a name it imported). Paths are followed through
//! re-exports (`pub use`) to the file that defines the item, so `crate::Server` is a dependency on `server/mod.rs`, not
//! on `lib.rs`; a re-export itself is a dependency only where the file's own code uses the name. Comments, strings
//! and `#[cfg(test)]` modules are left out: a unit test may use the layer above. Method calls are not seen: a file
//! that adds methods to a type (`impl Server` in `server/link.rs`) depends on the type's file, not the other way.
//!
//! Two graphs are checked: files, and the folders directly under `src/` (each top-level file counts as its own
//! folder). A cycle in either fails the test, which names every import on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The library crates (and the benchmark binary) whose sources are checked, by folder under `crates/`.
const CRATES: &[&str] = &[
    "emitter-core",
    "emitter-axum",
    "emitter-client",
    "emitter-listeners",
    "emitter-state",
    "emitter-bench",
    "emitter-redis",
];

#[test]
fn no_library_crate_has_an_import_cycle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    for name in CRATES {
        let graph = Graph::of(&crates.join(name).join("src"));
        assert!(!graph.files.is_empty(), "{name}: no sources found");
        // A crate of several files whose graph has no edge would mean the checker read nothing.
        let imports: usize = graph.edges().values().map(Vec::len).sum();
        assert!(graph.files.len() == 1 || imports > 0, "{name}: no imports found");
        eprintln!("{name}: {} files, {imports} imports", graph.files.len());
        failures.extend(graph.cycles().into_iter().map(|cycle| format!("{name}: {cycle}")));
    }
    assert!(failures.is_empty(), "import cycles:\n{}", failures.join("\n"));
}

/// The checker itself finds a cycle, at both levels, in a made-up crate.
#[test]
fn the_checker_finds_a_cycle() {
    let dir = std::env::temp_dir().join(format!("module-graph-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\npub use a::A;\n");
    write("a/mod.rs", "mod inner;\npub use inner::A;\n");
    write(
        "a/inner.rs",
        "// crate::b::B in a comment is no import\npub struct A(crate::b::B);\n",
    );
    write("b.rs", "use crate::A;\npub struct B;\nfn f(_: A) {}\n");
    let cycles = Graph::of(&dir).cycles();
    write(
        "b.rs",
        "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::A;\n}\n",
    );
    let acyclic = Graph::of(&dir).cycles();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cycles.len(), 2, "{cycles:#?}");
    assert!(cycles[0].contains("a/inner.rs:2 -> b.rs") && cycles[0].contains("b.rs:1 -> a/inner.rs"));
    assert!(cycles[1].starts_with("folders"), "{cycles:#?}");
    assert!(acyclic.is_empty(), "{acyclic:#?}");
}

/// One source file: its module path, what it defines, what it binds with `use`, and the paths its code names.
#[derive(Default)]
struct File {
    /// Names of the items (and inline modules) it defines.
    defines: BTreeSet<String>,
    /// `use` bindings: name → the (inline) module it is bound in and the path it stands for, as written.
    binds: HashMap<String, (Vec<String>, Vec<String>)>,
    /// `use … ::*`: the module it is in and the path, as written.
    globs: Vec<(Vec<String>, Vec<String>)>,
    /// Every path it names, with the line and the (inline) module it is named from.
    paths: Vec<(usize, Vec<String>, Vec<String>)>,
}

struct Graph {
    /// Module path → file, relative to `src/`.
    files: BTreeMap<Vec<String>, (PathBuf, File)>,
}

/// A dependency of one file on another, where it is named.
struct Edge {
    to: Vec<String>,
    line: usize,
}

impl Graph {
    fn of(src: &Path) -> Self {
        let mut files = BTreeMap::new();
        let mut folders = vec![src.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                if path.extension().is_none_or(|ext| ext != "rs") {
                    continue;
                }
                let relative = path.strip_prefix(src).unwrap().to_path_buf();
                let mut module: Vec<String> = relative
                    .with_extension("")
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    module.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                files.insert(module.clone(), (relative, parse(&module, &text)));
            }
        }
        Graph { files }
    }

    /// The file a path (named from `module`, in `file`) leads to, if it leads to an item of this crate, and whether
    /// the item was found there (rather than assumed: a macro's item, a method).
    fn resolve(
        &self,
        file: &[String],
        module: &[String],
        path: &[String],
        depth: usize,
    ) -> Option<(Vec<String>, bool)> {
        if depth > 32 || path.is_empty() {
            return None;
        }
        let mut at: Vec<String> = module.to_vec();
        let mut rest = path;
        match path[0].as_str() {
            "crate" | "$crate" => {
                at.clear();
                rest = &path[1..];
            }
            "self" => rest = &path[1..],
            "super" => {
                while rest.first().is_some_and(|s| s == "super") {
                    at.pop()?;
                    rest = &rest[1..];
                }
            }
            first => {
                let mut child = module.to_vec();
                child.push(first.to_owned());
                if !self.files.contains_key(&child) {
                    // A name the file imported, or another crate's.
                    let (bound_in, bound) = self.files.get(file)?.1.binds.get(first)?;
                    let mut full = bound.clone();
                    full.extend_from_slice(&path[1..]);
                    return self.resolve(file, bound_in, &full, depth + 1);
                }
            }
        }
        // `at` may be an inline module: the file is its nearest ancestor that is a file.
        while !self.files.contains_key(&at) {
            at.pop()?;
        }
        self.walk(at, rest, depth)
    }

    /// Follows `rest` down from the module `at` (a file).
    fn walk(&self, mut at: Vec<String>, rest: &[String], depth: usize) -> Option<(Vec<String>, bool)> {
        for (i, segment) in rest.iter().enumerate() {
            if segment == "self" {
                continue;
            }
            let mut child = at.clone();
            child.push(segment.clone());
            if self.files.contains_key(&child) {
                at = child;
                continue;
            }
            let file = &self.files[&at].1;
            if file.defines.contains(segment) {
                return Some((at, true));
            }
            if let Some((bound_in, bound)) = file.binds.get(segment) {
                let mut full = bound.clone();
                full.extend_from_slice(&rest[i + 1..]);
                return self.resolve(&at, bound_in, &full, depth + 1);
            }
            for (glob_in, glob) in &file.globs {
                let mut full = glob.clone();
                full.extend_from_slice(&rest[i..]);
                if let Some((found, true)) = self.resolve(&at, glob_in, &full, depth + 1) {
                    return Some((found, true));
                }
            }
            // Not found (a macro's item, a method): count it as the file's own.
            return Some((at, false));
        }
        // A module itself: no dependency until an item of it is named.
        None
    }

    fn edges(&self) -> BTreeMap<Vec<String>, Vec<Edge>> {
        let mut edges = BTreeMap::new();
        for (module, (_, file)) in &self.files {
            let mut out: Vec<Edge> = Vec::new();
            for (line, from, path) in &file.paths {
                let Some((to, _)) = self.resolve(module, from, path, 0) else {
                    continue;
                };
                if &to != module && !out.iter().any(|edge| edge.to == to) {
                    out.push(Edge { to, line: *line });
                }
            }
            edges.insert(module.clone(), out);
        }
        edges
    }

    /// Each cycle, as the imports on it (`file:line -> file`), files first, then folders.
    fn cycles(&self) -> Vec<String> {
        let edges = self.edges();
        let name = |module: &Vec<String>| self.files[module].0.display().to_string();
        let mut found = Vec::new();
        let file_graph: BTreeMap<String, Vec<(String, String)>> = edges
            .iter()
            .map(|(from, out)| {
                let out = out
                    .iter()
                    .map(|edge| {
                        (
                            name(&edge.to),
                            format!("{}:{} -> {}", name(from), edge.line, name(&edge.to)),
                        )
                    })
                    .collect();
                (name(from), out)
            })
            .collect();
        for component in strongly_connected(&file_graph) {
            found.push(describe("files", &file_graph, &component));
        }
        let folder = |module: &Vec<String>| match module.first() {
            None => name(module),
            Some(_) if module.len() == 1 && !self.files[module].0.ends_with("mod.rs") => name(module),
            Some(top) => format!("{top}/"),
        };
        let mut folder_graph: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (from, out) in &edges {
            let entry = folder_graph.entry(folder(from)).or_default();
            for edge in out {
                if folder(from) != folder(&edge.to) {
                    let how = format!("{}:{} -> {}", name(from), edge.line, name(&edge.to));
                    entry.push((folder(&edge.to), how));
                }
            }
        }
        for component in strongly_connected(&folder_graph) {
            found.push(describe("folders", &folder_graph, &component));
        }
        found
    }
}

fn describe(level: &str, graph: &BTreeMap<String, Vec<(String, String)>>, component: &BTreeSet<String>) -> String {
    let imports: Vec<&str> = component
        .iter()
        .flat_map(|node| &graph[node])
        .filter(|(to, _)| component.contains(to))
        .map(|(_, how)| how.as_str())
        .collect();
    format!("{level} {component:?}: {}", imports.join(", "))
}

/// The strongly connected components of more than one node (Tarjan's algorithm).
fn strongly_connected(graph: &BTreeMap<String, Vec<(String, String)>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, Vec<(String, String)>>,
        index: HashMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let at = state.index.len();
        state.index.insert(node, (at, at));
        state.stack.push(node);
        for (to, _) in state.graph.get(node).into_iter().flatten() {
            let to = to.as_str();
            match state.index.get(to) {
                None => {
                    visit(state, to);
                    let low = state.index[to].1.min(state.index[node].1);
                    state.index.get_mut(node).unwrap().1 = low;
                }
                Some(&(index, _)) if state.stack.contains(&to) => {
                    let low = index.min(state.index[node].1);
                    state.index.get_mut(node).unwrap().1 = low;
                }
                Some(_) => {}
            }
        }
        let (index, low) = state.index[node];
        if index == low {
            let mut component = BTreeSet::new();
            while let Some(top) = state.stack.pop() {
                component.insert(top.to_owned());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: HashMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    /// `::`
    Path,
}

/// The tokens of a source (comments, strings, char literals and lifetimes dropped), each with its line.
fn tokens(text: &str) -> Vec<(usize, Token)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == 'b' && (matches!(at(i + 1), '"' | '\'') || at(i + 1) == 'r' && matches!(at(i + 2), '"' | '#')) {
            // A byte string or byte: read on as the literal after the `b`.
            i += 1;
        } else if c == 'r' && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '"' | '#'))) {
            // A raw string: r"…", r#"…"#.
            let mut hashes = 0;
            i += 1;
            while at(i) == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                line += usize::from(chars[i] == '\n');
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' || (c == '$' && at(i + 1).is_alphabetic()) {
            let start = i;
            i += 1;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            out.push((line, Token::Ident(chars[start..i].iter().collect())));
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' || at(i) == '.' && at(i + 1).is_ascii_digit() {
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push((line, Token::Path));
            i += 2;
        } else {
            out.push((line, Token::Punct(c)));
            i += 1;
        }
    }
    out
}

/// Reads a file: what it defines, binds and names. `module` is its module path.
fn parse(module: &[String], text: &str) -> File {
    let tokens = tokens(text);
    let mut file = File::default();
    let ident = |i: usize| match tokens.get(i) {
        Some((_, Token::Ident(name))) => Some(name.as_str()),
        _ => None,
    };
    // Inline modules open: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut cfg_test = false;
    let mut skip_until: Option<usize> = None;
    // Re-exports (`pub use`), and the names the file's code uses (outside its `use` lines).
    let mut exports = Vec::new();
    let mut used = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let (line, token) = &tokens[i];
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth + 1) {
                    inline.pop();
                }
                if skip_until == Some(depth) {
                    skip_until = None;
                }
            }
            Token::Punct('#') if skip_until.is_none() => {
                // `#[cfg(test)]`: the item after it is a test's.
                let attr: Vec<&str> = (i + 2..i + 6).filter_map(ident).collect();
                if attr.first() == Some(&"cfg") && attr.get(1) == Some(&"test") {
                    cfg_test = true;
                }
            }
            _ => {}
        }
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(name, _)| name.clone()))
            .collect();
        if let Token::Ident(word) = token {
            if matches!(
                word.as_str(),
                "struct" | "enum" | "union" | "trait" | "fn" | "type" | "const" | "static" | "mod" | "macro_rules"
            ) {
                let name_at = if word == "macro_rules" { i + 2 } else { i + 1 };
                if let Some(name) = ident(name_at) {
                    if skip_until.is_none() {
                        file.defines.insert(name.to_owned());
                    }
                    if word == "mod" && tokens.get(i + 2).map(|t| &t.1) == Some(&Token::Punct('{')) {
                        if cfg_test && skip_until.is_none() {
                            skip_until = Some(depth);
                        }
                        inline.push((name.to_owned(), depth + 1));
                    }
                }
                cfg_test = false;
            } else if word == "impl" {
                cfg_test = false;
            }
        }
        if let Token::Ident(word) = token {
            if word == "use" {
                let mut uses = Vec::new();
                let end = use_tree(&tokens, i + 1, &mut Vec::new(), &mut uses);
                let export = i > 0
                    && (matches!(&tokens[i - 1].1, Token::Ident(p) if p == "pub")
                        || tokens[i - 1].1 == Token::Punct(')'));
                if skip_until.is_none() && !cfg_test {
                    for (path, binding) in uses {
                        match (&binding, export) {
                            // A re-export is a dependency only where the file itself uses the name.
                            (Some(name), true) => exports.push((*line, here.clone(), path.clone(), name.clone())),
                            (None, true) => {}
                            (_, false) => file.paths.push((*line, here.clone(), path.clone())),
                        }
                        // An inline module's bindings count as the file's (they rarely clash).
                        match binding {
                            Some(name) => drop(file.binds.insert(name, (here.clone(), path))),
                            None => file.globs.push((here.clone(), path)),
                        }
                    }
                }
                cfg_test = false;
                i = end;
                continue;
            }
            used.insert(word.clone());
            // A path in code: `a::b::c`, not preceded by `::` (that is the tail of a path already read).
            let follows_path = i > 0 && tokens[i - 1].1 == Token::Path;
            if !follows_path && tokens.get(i + 1).map(|t| &t.1) == Some(&Token::Path) {
                let mut path = vec![word.clone()];
                let mut j = i + 1;
                while tokens.get(j).map(|t| &t.1) == Some(&Token::Path) {
                    match ident(j + 1) {
                        Some(next) => path.push(next.to_owned()),
                        None => break,
                    }
                    j += 2;
                }
                if skip_until.is_none() {
                    file.paths.push((*line, here.clone(), path));
                }
                i = j;
                continue;
            }
        }
        i += 1;
    }
    for (line, here, path, name) in exports {
        if used.contains(&name) {
            file.paths.push((line, here, path));
        }
    }
    file
}

/// Reads a `use` tree from `i`; pushes each (path, binding) where binding is the name bound (None for a glob).
/// Returns the index after the tree's end (`;`).
fn use_tree(
    tokens: &[(usize, Token)],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    let start = prefix.len();
    loop {
        match tokens.get(i).map(|t| &t.1) {
            Some(Token::Ident(word)) if word == "as" => {
                if let Some((_, Token::Ident(alias))) = tokens.get(i + 1) {
                    let mut path = prefix.clone();
                    if path.last().is_some_and(|s| s == "self") {
                        path.pop();
                    }
                    out.push((path, Some(alias.clone())));
                }
                i += 2;
                prefix.truncate(start);
                return i;
            }
            Some(Token::Ident(word)) => {
                prefix.push(word.clone());
                i += 1;
            }
            Some(Token::Path) => i += 1,
            Some(Token::Punct('*')) => {
                out.push((prefix.clone(), None));
                prefix.truncate(start);
                return i + 1;
            }
            Some(Token::Punct('{')) => {
                i += 1;
                loop {
                    i = use_tree(tokens, i, prefix, out);
                    match tokens.get(i).map(|t| &t.1) {
                        Some(Token::Punct(',')) => i += 1,
                        Some(Token::Punct('}')) => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if tokens.get(i).map(|t| &t.1) == Some(&Token::Punct('}')) {
                        i += 1;
                        break;
                    }
                }
                prefix.truncate(start);
                return i;
            }
            _ => {
                // The end of a simple path: `,`, `}` or `;`.
                if prefix.len() > start {
                    let mut path = prefix.clone();
                    if path.last().is_some_and(|s| s == "self") {
                        path.pop();
                    }
                    let name = path.last().cloned().unwrap_or_default();
                    out.push((path, Some(name)));
                }
                prefix.truncate(start);
                if tokens.get(i).map(|t| &t.1) == Some(&Token::Punct(';')) {
                    return i + 1;
                }
                return i;
            }
        }
    }
}
