//! The servers under test.

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Our server: examples/bench on emitter-core and emitter-axum.
    Emitter,
    /// The reference: @krmx/server from npm, on Node.
    Node,
    /// The bare axum WebSocket broadcast server, without any Krmx logic, with tungstenite's default buffers: what a
    /// user writes without Krmx. Every goal against "bare axum" is measured against this one.
    Axum,
    /// The same bare server with emitter-axum's small buffers (1 KiB read, 2 KiB write): shown beside `Axum` to
    /// explain a difference, never a goal's bar.
    AxumEqual,
    /// examples/bench built from other code (the binary `EMITTER_BENCH_BEFORE` names): a library change measured
    /// side by side with the code before it, in the same run and alternating with it. Only when asked for.
    Before,
    /// Three processes of examples/bench, each a node of one cluster on a throwaway redis-server (emitter-redis), all
    /// on this machine: measured against `Emitter` (the same server on its own) in the cluster groups only.
    Cluster,
}

impl Target {
    /// Every target, in the order the report shows them.
    pub const ALL: [Target; 5] = [
        Target::Emitter,
        Target::Node,
        Target::Axum,
        Target::AxumEqual,
        Target::Cluster,
    ];
    /// The servers of one process each: every group but the cluster groups runs against these.
    pub const SINGLE: [Target; 5] = [
        Target::Emitter,
        Target::Before,
        Target::Node,
        Target::Axum,
        Target::AxumEqual,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Emitter => "emitter",
            Target::Before => "before",
            Target::Node => "node",
            Target::Axum => "axum",
            Target::AxumEqual => "axum-equal",
            Target::Cluster => "cluster",
        }
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL
            .into_iter()
            .chain([Target::Before])
            .find(|target| target.name() == name)
    }

    /// Whether the target speaks Krmx (the bare server has no link protocol: connected counts as linked).
    pub fn krmx(self) -> bool {
        matches!(self, Target::Emitter | Target::Before | Target::Node | Target::Cluster)
    }
}
