//! Mixed precision by an accuracy budget: each Conv/Gemm/MatMul gets the smallest of int4
//! weights, int8, int16 activations (16x8) or float that keeps the whole model's output
//! within the budget (its SQNR against float on calibration samples, in dB).
//!
//! Greedy, on the calibrated ranges (no recalibration per choice): start from int8 for all;
//! while the output is below the budget, promote the one layer whose promotion (int8 to
//! 16x8, 16x8 to float) raises the SQNR most; then, largest weights first, narrow each int8
//! layer to 4-bit weights and keep it when the budget still holds. Every trial is one
//! rewrite and a run of the evaluator over the samples, so the search costs a few times
//! the layer count in evaluations.

use super::calibrate::{CalibrationSet, Ranges};
use super::quantize_static::{self, Quantized};
use super::{QuantError, QuantOptions};
use kiln_ir::{Graph, Op, Tensor};
use std::fmt;

/// Samples the search scores on (spread evenly over the calibration set).
const SAMPLES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Int4,
    Int8,
    Int16,
    Float,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Int4 => "int8, 4-bit weights",
            Precision::Int8 => "int8",
            Precision::Int16 => "16x8 (int16 activations)",
            Precision::Float => "float",
        })
    }
}

/// What the search picked for one layer.
#[derive(Clone, Debug)]
pub struct Choice {
    pub node: String,
    pub precision: Precision,
    /// Weight elements of the layer.
    pub weights: usize,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node `{}` ({} weights): {}", self.node, self.weights, self.precision)
    }
}

pub struct Searched {
    pub quantized: Quantized,
    pub choices: Vec<Choice>,
    /// The output SQNR of the chosen mix on the samples, dB.
    pub sqnr: f64,
}

/// Runs the search; fails when even the best promotions stay below `budget_db`.
pub fn search(
    g: &Graph,
    set: &CalibrationSet,
    ranges: &Ranges,
    opts: &QuantOptions,
    budget_db: f64,
) -> Result<Searched, QuantError> {
    let layers: Vec<(String, usize)> = g
        .node_ids()
        .filter(|&n| matches!(g.node(n).op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul))
        .filter_map(|n| {
            let node = g.node(n);
            let w = g.const_value(*node.inputs.get(1)?)?;
            Some((node.name.clone(), w.numel()))
        })
        .collect();
    let samples: Vec<Vec<Tensor>> = set.spread(g, SAMPLES).into_iter().map(|i| set.sample(g, i)).collect();
    let want: Vec<Tensor> = samples
        .iter()
        .map(|x| kiln_ir::eval::run(g, x).map(|mut y| y.remove(0)))
        .collect::<Result<_, _>>()
        .map_err(QuantError::Eval)?;
    let trials = std::cell::Cell::new(0);
    let score = |prec: &[Precision]| -> Result<(f64, Quantized), QuantError> {
        trials.set(trials.get() + 1);
        opts.progress
            .report("searching layer precisions (trials)", trials.get(), 0);
        let mut o = opts.clone();
        o.accuracy_budget = None;
        for ((name, _), p) in layers.iter().zip(prec) {
            match p {
                Precision::Float => o.keep_float.push(name.clone()),
                Precision::Int16 => o.int16.push(name.clone()),
                Precision::Int4 => o.weight_bits_of.push((name.clone(), 4)),
                Precision::Int8 => o.weight_bits_of.push((name.clone(), 8)),
            }
        }
        let q = quantize_static::run(g, ranges, &o)?;
        let (mut sig, mut noise) = (0f64, 0f64);
        for (x, w) in samples.iter().zip(&want) {
            let y = kiln_ir::eval::run(&q.graph, x).map_err(QuantError::Eval)?;
            for (a, b) in w.to_f64_vec().iter().zip(y[0].to_f64_vec()) {
                sig += a * a;
                noise += (a - b) * (a - b);
            }
        }
        let db = if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (sig / noise).log10()
        };
        Ok((db, q))
    };
    let mut prec = vec![Precision::Int8; layers.len()];
    let (mut db, mut best_q) = score(&prec)?;
    while db < budget_db {
        let mut best: Option<(usize, Precision, f64, Quantized)> = None;
        for i in 0..layers.len() {
            let next = match prec[i] {
                Precision::Int8 | Precision::Int4 => Precision::Int16,
                Precision::Int16 => Precision::Float,
                Precision::Float => continue,
            };
            let mut p = prec.clone();
            p[i] = next;
            let (d, q) = score(&p)?;
            if best.as_ref().is_none_or(|b| d > b.2) {
                best = Some((i, next, d, q));
            }
        }
        match best {
            Some((i, next, d, q)) if d > db => {
                prec[i] = next;
                (db, best_q) = (d, q);
            }
            _ => break,
        }
    }
    if db < budget_db {
        return Err(QuantError::Budget(budget_db, db));
    }
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(layers[i].1));
    for i in order {
        if prec[i] != Precision::Int8 {
            continue;
        }
        prec[i] = Precision::Int4;
        let (d, q) = score(&prec)?;
        if d >= budget_db {
            (db, best_q) = (d, q);
        } else {
            prec[i] = Precision::Int8;
        }
    }
    let choices = layers
        .into_iter()
        .zip(prec)
        .map(|((node, weights), precision)| Choice {
            node,
            precision,
            weights,
        })
        .collect();
    Ok(Searched {
        quantized: best_q,
        choices,
        sqnr: db,
    })
}
