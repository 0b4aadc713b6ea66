//! `kiln`, the command-line driver. Argument parsing and reporting live here; all compiler
//! work is in the library so `build.rs` users get the same behaviour.

use clap::{Parser, Subcommand};
use kiln::PipelineOptions;
use std::io::Write;
use std::path::PathBuf;

mod cli;
use cli::args::*;
use cli::{compile::*, inspect::*, report::*, run::*};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Ahead-of-time compiler from ONNX to static code")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// No progress line on stderr (it is shown only on a terminal, for steps that take
    /// more than a second).
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Summarize a model: ops, parameters, MACs and activation sizes per layer.
    Inspect {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        /// One JSON document on stdout instead of text (schema: docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Run a model on .npy inputs with the reference evaluator.
    Eval {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Input .npy files, in graph input order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Output .npy files, in graph output order.
        #[arg(long = "output", required = true)]
        outputs: Vec<PathBuf>,
    },
    /// Accuracy and size of a quantized build against the float model: SQNR per layer on the
    /// calibration data, weight bytes, and end-to-end agreement (accuracy too when the
    /// evaluation folder has labels.npy).
    Report {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Evaluation data, laid out like calibration data (default: the calibration data).
        #[arg(long, value_name = "DIR")]
        eval: Option<PathBuf>,
        /// One JSON document on stdout instead of text (schema: docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Print the IR after import and the pass pipeline.
    Dump {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Also print the IR after this pass (repeatable).
        #[arg(long = "print-after")]
        print_after: Vec<String>,
        /// Stop the pipeline after this pass.
        #[arg(long = "stop-after")]
        stop_after: Option<String>,
    },
    /// Time inference with the reference evaluator; prints the median per inference.
    Bench {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        #[command(flatten)]
        bench: BenchArgs,
    },
    /// Compile a model: `--emit object` writes <prefix>.o, lib<prefix>.a, <prefix>.h, <prefix>.rs;
    /// `--emit c` writes <prefix>.c and <prefix>.h; `--emit rust` writes <prefix>.rs.
    Compile {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        #[command(flatten)]
        out: CompileArgs,
    },
    /// List supported ONNX operators and TFLite builtins.
    Ops {
        /// Print SUPPORTED_OPS.md.
        #[arg(long)]
        markdown: bool,
    },
}

/// Whether `e` is a write to a closed pipe (`kiln inspect m | head`): the reader has what it
/// wanted, so the command ends quietly, as a Unix tool killed by SIGPIPE would.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::progress::set_quiet(cli.quiet);
    let res = match &cli.cmd {
        Cmd::Inspect { model, shapes, json } => inspect(model, shapes, *json),
        Cmd::Report {
            model,
            shapes,
            quant,
            eval,
            json,
        } => report(model, shapes, quant, eval.as_deref(), *json),
        Cmd::Eval {
            model,
            shapes,
            quant,
            inputs,
            outputs,
        } => eval(model, shapes, quant, inputs, outputs),
        Cmd::Dump {
            model,
            shapes,
            quant,
            print_after,
            stop_after,
        } => {
            let opts = PipelineOptions {
                print_after: print_after.clone(),
                stop_after: stop_after.clone(),
            };
            // a dump shows the passes on the model as it is unless a mode is named
            let m = if matches!(quant.quantize, None | Some(QuantMode::None)) {
                load(model, shapes, &opts)
            } else {
                load_quantized(model, shapes, quant)
            };
            m.and_then(|m| {
                write!(std::io::stdout(), "{}", kiln_ir::text::dump(&m.graph)?)?;
                Ok(())
            })
        }
        Cmd::Bench {
            model,
            shapes,
            quant,
            bench: args,
        } => bench(model, shapes, quant, args),
        Cmd::Compile {
            model,
            shapes,
            quant,
            out,
        } => compile(model, shapes, quant, out),
        Cmd::Ops { markdown } => ops(*markdown),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
