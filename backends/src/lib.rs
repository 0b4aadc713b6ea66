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

/// `Ok` when `ok`, else the refusal `why`: the guard a lowering starts with.
pub fn need(ok: bool, why: &'static str) -> Lowering {
    if ok { Ok(()) } else { Err(Refusal(why)) }
}
