//! Errors of the IR layer: each names the node or value it is about.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    /// An op was given inputs whose types or shapes it cannot accept.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("node `{node}`: {source}")]
    AtNode {
        node: String,
        #[source]
        source: Box<IrError>,
    },
    #[error("graph has a cycle through node `{0}`")]
    Cycle(String),
    #[error("invalid graph: {0}")]
    Invalid(String),
    #[error("evaluation of {op}: {msg}")]
    Eval { op: &'static str, msg: String },
    #[error("input {index} (`{name}`): expected {expected}, got {got}")]
    BadInput {
        index: usize,
        name: String,
        expected: String,
        got: String,
    },
}

impl IrError {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> IrError {
        IrError::Shape { op, msg: msg.into() }
    }

    pub fn eval(op: &'static str, msg: impl Into<String>) -> IrError {
        IrError::Eval { op, msg: msg.into() }
    }

    pub fn at(self, node: &str) -> IrError {
        IrError::AtNode {
            node: node.to_string(),
            source: Box::new(self),
        }
    }
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
