//! Kiln's code generators. Each backend depends only on `kiln-ir`, accepts a verified graph
//! with its memory plan, and reports every node it cannot compile at once.

pub mod c;
pub mod cranelift;
pub mod header;
pub mod namer;
pub mod pack;
pub mod rust;
pub mod shapes;
pub mod text;

/// The answer a backend gives for one node: lowered, or refused with the reason. Each
/// backend decides support by attempting the lowering (into a scratch buffer when it
/// only asks), so what it claims to support and what it emits cannot drift apart.
pub type Lowering = Result<(), Refusal>;

/// Why a backend cannot lower a node (the caller adds the node's name and types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

impl Refusal {
    /// How every backend reports a node it refuses: ``node `name`: Op on types (why)``.
    pub fn describe(&self, g: &kiln_ir::Graph, n: kiln_ir::NodeId) -> String {
        let node = g.node(n);
        let types: Vec<String> = node.inputs.iter().map(|&v| g.value(v).ty.to_string()).collect();
        format!(
            "node `{}`: {} on {} ({})",
            node.name,
            node.op.name(),
            types.join(", "),
            self.0
        )
    }
}

/// `Ok` when `ok`, else the refusal `why`: the guard a lowering starts with.
pub fn need(ok: bool, why: &'static str) -> Lowering {
    if ok { Ok(()) } else { Err(Refusal(why)) }
}
