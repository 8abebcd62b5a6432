//! The servers under test.

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Our server: examples/bench on emitter-core and emitter-axum.
    Emitter,
    /// The reference: @krmx/server from npm, on Node.
    Node,
    /// The bare axum WebSocket broadcast server, without any Krmx logic.
    Axum,
}

impl Target {
    /// Every target, in the order the report shows them.
    pub const ALL: [Target; 3] = [Target::Emitter, Target::Node, Target::Axum];

    pub fn name(self) -> &'static str {
        match self {
            Target::Emitter => "emitter",
            Target::Node => "node",
            Target::Axum => "axum",
        }
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|target| target.name() == name)
    }

    /// Whether the target speaks Krmx (the bare server has no link protocol: connected counts as linked).
    pub fn krmx(self) -> bool {
        self != Target::Axum
    }
}
