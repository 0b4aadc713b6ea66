//! The command-line driver's commands, one module each; `main.rs` parses and dispatches.

pub mod args;
pub mod compile;
pub mod inspect;
pub mod onchip;
pub mod progress;
pub mod report;
pub mod run;
