//! The pass pipeline: small graph rewrites run in one explicit order, with the verifier after
//! each so a broken pass is caught at the pass that broke it, not in a backend.

pub mod eliminate_dead_nodes;
pub mod expand_normalizations;
pub mod flatten_full_window_convs;
pub mod fold_clamp_tables;
pub mod fold_constants;
pub mod fuse_activations;
pub mod fuse_batch_norm;
pub mod fuse_matmul_add;
pub mod lower_sub_div;
pub mod remove_identities;
pub mod unfuse_activations;
pub mod unroll_rnn;

use kiln_ir::{Graph, IrError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PassError {
    #[error("pass `{pass}`: {source}")]
    Failed { pass: &'static str, source: IrError },
    #[error("the graph is invalid after pass `{pass}`: {source}")]
    Verify { pass: &'static str, source: IrError },
    #[error("unknown pass `{0}`; passes are: {list}", list = names().join(", "))]
    UnknownPass(String),
}

/// One pass: rewrites the graph in place and says whether it changed anything.
pub struct Pass {
    pub name: &'static str,
    pub run: fn(&mut Graph) -> Result<bool, IrError>,
}

/// The float pipeline, in order.
pub const PIPELINE: &[Pass] = &[
    Pass {
        name: "remove_identities",
        run: remove_identities::run,
    },
    Pass {
        name: "fold_constants",
        run: fold_constants::run,
    },
    Pass {
        name: "fuse_batch_norm",
        run: fuse_batch_norm::run,
    },
    Pass {
        name: "fuse_matmul_add",
        run: fuse_matmul_add::run,
    },
    Pass {
        name: "fuse_activations",
        run: fuse_activations::run,
    },
    Pass {
        name: "eliminate_dead_nodes",
        run: eliminate_dead_nodes::run,
    },
];

pub fn names() -> Vec<&'static str> {
    PIPELINE.iter().map(|p| p.name).collect()
}

/// Where to look at or stop the pipeline (`--print-after`, `--stop-after`).
#[derive(Clone, Debug, Default)]
pub struct PipelineOptions {
    pub print_after: Vec<String>,
    pub stop_after: Option<String>,
}

/// Runs the pipeline; `on_print` receives the pass name and the graph for `--print-after`.
pub fn run(g: &mut Graph, opts: &PipelineOptions, mut on_print: impl FnMut(&str, &Graph)) -> Result<(), PassError> {
    for name in opts.print_after.iter().chain(opts.stop_after.iter()) {
        if !PIPELINE.iter().any(|p| p.name == name) {
            return Err(PassError::UnknownPass(name.clone()));
        }
    }
    kiln_ir::verify::verify(g).map_err(|source| PassError::Verify { pass: "import", source })?;
    for pass in PIPELINE {
        (pass.run)(g).map_err(|source| PassError::Failed {
            pass: pass.name,
            source,
        })?;
        kiln_ir::verify::verify(g).map_err(|source| PassError::Verify {
            pass: pass.name,
            source,
        })?;
        if opts.print_after.iter().any(|p| p == pass.name) {
            on_print(pass.name, g);
        }
        if opts.stop_after.as_deref() == Some(pass.name) {
            break;
        }
    }
    Ok(())
}

/// Text-in, text-out checks of single passes (the Cranelift filetest idea): the graph
/// before in the IR text form, the pass, then the graph after, verified on both sides.
#[cfg(test)]
pub(crate) fn check_rewrite(pass: fn(&mut Graph) -> Result<bool, IrError>, before: &str, after: &str) {
    let mut g = kiln_ir::parse::parse(before).expect("the input parses");
    kiln_ir::verify::verify(&g).expect("the input verifies");
    let changed = pass(&mut g).expect("the pass runs");
    kiln_ir::verify::verify(&g).expect("the output verifies");
    let got = kiln_ir::text::dump(&g).expect("acyclic");
    assert_eq!(got, after, "\ngot:\n{got}");
    assert_eq!(changed, before != after, "the pass's `changed` flag");
}
