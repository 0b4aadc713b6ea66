//! Whether to add activation equalization (`equalize`) and bias correction
//! (`bias_correction`) to plain calibration. Both are fitted to the calibration data, so
//! both can help on it and hurt elsewhere; each is judged on samples it was not fitted on:
//! the set is split in two halves (first and second, so that overlapping windows of one
//! recording stay on one side), each half quantizes (ranges, equalization, corrections) and
//! the other scores it, and the two scores add. Equalization is judged first, bias
//! correction on top of the winner; each is kept only when it lowers the held-out error.
//!
//! Both are off unless asked for: measured on the models in `tests/models`, each helps some
//! models and hurts others (in mean or in worst-case error), and on calibration sets of a
//! few dozen samples the held-out verdict does not predict the effect on other data well
//! enough to be a default (the numbers are in issue 18's notes).

use super::calibrate::{CalibrationSet, Method};
use super::{QuantError, QuantOptions, bias_correction, equalize, quantize_static, rounding};
use kiln_ir::{Graph, Tensor};

/// Fewer samples than this leave nothing to hold out: the refinements stay off.
const MIN_SAMPLES: usize = 8;
/// Samples the decision uses at most (spread evenly over the set).
const MAX_SAMPLES: usize = 64;

/// Whether a refinement is applied: never (the default), always, or when held-out
/// calibration samples say it helps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refine {
    #[default]
    Off,
    On,
    Auto,
}

/// Which refinements a build applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refinements {
    pub equalize: bool,
    pub rounding: bool,
    pub bias_correction: bool,
}

/// What `decide` chose, with a note per refinement decided on data saying why.
pub struct Choice {
    pub on: Refinements,
    pub notes: Vec<String>,
}

pub fn decide(g: &Graph, set: &CalibrationSet, method: Method, opts: &QuantOptions) -> Result<Choice, QuantError> {
    let can_equalize = !equalize::pairs(g).is_empty();
    let narrow = opts.weight_bits.is_some_and(|b| b < 8) || opts.weight_bits_of.iter().any(|w| w.1 < 8);
    let rounding = (opts.weight_rounding).unwrap_or(if narrow { Refine::On } else { Refine::Off });
    let mut c = Choice {
        on: Refinements {
            equalize: opts.equalize == Refine::On && can_equalize,
            rounding: rounding == Refine::On,
            bias_correction: opts.bias_correction == Refine::On,
        },
        notes: Vec::new(),
    };
    // in order: each judged on top of the ones kept before it
    type Set = fn(&mut Refinements);
    let undecided: Vec<(&str, Set)> = [
        (
            opts.equalize == Refine::Auto && can_equalize,
            "equalization before depthwise convolutions",
            (|r: &mut Refinements| r.equalize = true) as Set,
        ),
        (
            rounding == Refine::Auto,
            "weight rounding for the data",
            |r: &mut Refinements| r.rounding = true,
        ),
        (
            opts.bias_correction == Refine::Auto,
            "bias correction",
            |r: &mut Refinements| r.bias_correction = true,
        ),
    ]
    .into_iter()
    .filter(|u| u.0)
    .map(|u| (u.1, u.2))
    .collect();
    if undecided.is_empty() {
        return Ok(c);
    }
    let picks = set.spread(g, MAX_SAMPLES);
    let n = picks.len();
    if n < MIN_SAMPLES {
        c.notes.push(format!(
            "data-fitted refinements: off, {n} calibration samples are too few to judge them on held-out data (at least {MIN_SAMPLES})"
        ));
        return Ok(c);
    }
    let halves = [&picks[..n / 2], &picks[n / 2..]];
    let folds = [Fold::new(g, set, halves[0])?, Fold::new(g, set, halves[1])?];
    let score = |r: Refinements| -> Result<[Score; 2], QuantError> {
        let (a, b) = (&folds[0], &folds[1]);
        Ok([a.score(g, b, method, opts, r)?, b.score(g, a, method, opts, r)?])
    };
    let trials = undecided.len() + 1;
    opts.progress
        .report("judging refinements on held-out samples", 0, trials);
    let mut best = score(c.on)?;
    for (i, (what, set_on)) in undecided.into_iter().enumerate() {
        opts.progress
            .report("judging refinements on held-out samples", i + 1, trials);
        let mut trial = c.on;
        set_on(&mut trial);
        let s = score(trial)?;
        let kept = better(&s, &best);
        c.notes.push(verdict(what, kept, &best, &s));
        if kept {
            c.on = trial;
            best = s;
        }
    }
    Ok(c)
}

/// Held-out output error: the mean and the largest absolute difference from float.
#[derive(Clone, Copy)]
struct Score {
    mean: f64,
    max: f64,
}

/// A refinement wins when it lowers the mean error on each held-out half without raising
/// the worst case on either: a change that helps one half and hurts the other is fitting
/// that half, and one that trades rare large errors for many small gains is not taken.
fn better(with: &[Score; 2], without: &[Score; 2]) -> bool {
    with.iter().zip(without).all(|(a, b)| a.mean < b.mean && a.max <= b.max)
}

fn verdict(what: &str, kept: bool, without: &[Score; 2], with: &[Score; 2]) -> String {
    let f = |s: &[Score; 2]| {
        format!(
            "{:.3e}/{:.3e} and {:.3e}/{:.3e}",
            s[0].mean, s[0].max, s[1].mean, s[1].max
        )
    };
    format!(
        "{what}: {}, held-out mean/max abs error on each half {} without, {} with",
        if kept { "on" } else { "off" },
        f(without),
        f(with)
    )
}

/// One half of the decision samples, with the float outputs it is scored against.
struct Fold {
    set: CalibrationSet,
    samples: Vec<Vec<Tensor>>,
    want: Vec<Vec<Tensor>>,
}

impl Fold {
    fn new(g: &Graph, set: &CalibrationSet, picks: &[usize]) -> Result<Fold, QuantError> {
        let samples: Vec<Vec<Tensor>> = picks.iter().map(|&i| set.sample(g, i)).collect();
        let want = (samples.iter())
            .map(|x| kiln_ir::eval::run(g, x))
            .collect::<Result<_, _>>()
            .map_err(QuantError::Eval)?;
        Ok(Fold {
            set: set.subset(g, picks),
            samples,
            want,
        })
    }

    /// The output error on `test` of `g` quantized on this half.
    fn score(
        &self,
        g: &Graph,
        test: &Fold,
        method: Method,
        opts: &QuantOptions,
        r: Refinements,
    ) -> Result<Score, QuantError> {
        let q = fitted(g, &self.set, &self.samples, method, opts, r)?;
        let (sum, count, max) = super::abs_errors(&q, &test.samples, &test.want)?;
        Ok(Score {
            mean: sum / count.max(1) as f64,
            max,
        })
    }
}

/// `g` quantized on `set` (whose samples are `samples`) with the refinements `r`.
fn fitted(
    g: &Graph,
    set: &CalibrationSet,
    samples: &[Vec<Tensor>],
    method: Method,
    opts: &QuantOptions,
    r: Refinements,
) -> Result<Graph, QuantError> {
    let eq;
    let g = if r.equalize {
        eq = equalize::equalized(g, samples).map_err(QuantError::Ir)?.0;
        &eq
    } else {
        g
    };
    let ranges = super::calibrate::calibrate(g, set, method, |_, _| {})?;
    let mut q = quantize_static::run(g, &ranges, opts)?.graph;
    finish(g, &mut q, samples, r)?;
    Ok(q)
}

/// The refinements that act on the integer graph `q` of float graph `g` (weight rounding,
/// then bias correction fitted on the rounded weights), fitted on `samples`.
pub fn finish(g: &Graph, q: &mut Graph, samples: &[Vec<Tensor>], r: Refinements) -> Result<(), QuantError> {
    if r.rounding {
        rounding::round(g, q, samples)?;
    }
    if r.bias_correction {
        bias_correction::correct(g, q, samples)?;
    }
    Ok(())
}
