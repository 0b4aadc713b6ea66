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
use super::{QuantError, QuantOptions, bias_correction, equalize, quantize_static};
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

/// What `decide` chose, with a note per refinement saying why.
pub struct Choice {
    pub equalize: bool,
    pub bias_correction: bool,
    pub notes: Vec<String>,
}

pub fn decide(g: &Graph, set: &CalibrationSet, method: Method, opts: &QuantOptions) -> Result<Choice, QuantError> {
    let can_equalize = !equalize::pairs(g).is_empty();
    let mut c = Choice {
        equalize: opts.equalize == Refine::On && can_equalize,
        bias_correction: opts.bias_correction == Refine::On,
        notes: Vec::new(),
    };
    let eq_auto = opts.equalize == Refine::Auto && can_equalize;
    let bc_auto = opts.bias_correction == Refine::Auto;
    let undecided = eq_auto || bc_auto;
    if !undecided {
        return Ok(c);
    }
    if set.samples < MIN_SAMPLES {
        c.notes.push(format!(
            "equalization and bias correction: off, {} calibration samples are too few to judge them on held-out data (at least {MIN_SAMPLES})",
            set.samples
        ));
        return Ok(c);
    }
    let n = set.samples.min(MAX_SAMPLES);
    let picks: Vec<usize> = (0..n).map(|i| i * set.samples / n).collect();
    let halves = [&picks[..n / 2], &picks[n / 2..]];
    let folds = [Fold::new(g, set, halves[0])?, Fold::new(g, set, halves[1])?];
    let score = |eq: bool, bc: bool| -> Result<[Score; 2], QuantError> {
        let (a, b) = (&folds[0], &folds[1]);
        Ok([
            a.score(g, b, method, opts, eq, bc)?,
            b.score(g, a, method, opts, eq, bc)?,
        ])
    };
    let mut best = score(c.equalize, c.bias_correction)?;
    if eq_auto {
        let s = score(true, c.bias_correction)?;
        c.equalize = better(&s, &best);
        c.notes.push(verdict(
            "equalization before depthwise convolutions",
            c.equalize,
            &best,
            &s,
        ));
        if c.equalize {
            best = s;
        }
    }
    if bc_auto {
        let s = score(c.equalize, true)?;
        c.bias_correction = better(&s, &best);
        c.notes.push(verdict("bias correction", c.bias_correction, &best, &s));
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
        eq: bool,
        bc: bool,
    ) -> Result<Score, QuantError> {
        let fitted = if eq {
            equalize::equalized(g, &self.samples).map_err(QuantError::Ir)?.0
        } else {
            g.clone()
        };
        let ranges = super::calibrate::calibrate(&fitted, &self.set, method, |_, _| {})?;
        let mut q = quantize_static::run(&fitted, &ranges, opts)?;
        if bc {
            bias_correction::correct(&fitted, &mut q.graph, &self.samples)?;
        }
        let (sum, count, max) = super::abs_errors(&q.graph, &test.samples, &test.want)?;
        Ok(Score {
            mean: sum / count.max(1) as f64,
            max,
        })
    }
}
