//! The calibration cache (`--calibration-cache FILE`): calibration runs the whole data set
//! through the evaluator, so its result is kept in a small text file and reused while the
//! model, the data and the method are unchanged (a hash of all three is the first line).
//!
//! ```text
//! kiln-calibration v1 <key>
//! <method> <samples>
//! <lo> <hi> <value name>        one line per value
//! ```

use super::QuantError;
use super::calibrate::{CalibrationSet, Method, Ranges};
use kiln_ir::Graph;
use std::fmt::Write;
use std::path::Path;

/// FNV-1a over the graph's text form, the calibration tensors and the method.
pub fn key(g: &Graph, set: &CalibrationSet, method: Option<Method>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    };
    eat(kiln_ir::text::dump(g).unwrap_or_default().as_bytes());
    for v in g.node_ids().flat_map(|n| g.node(n).inputs.clone()) {
        if let Some(t) = g.const_value(v) {
            eat(&t.data.to_le_bytes());
        }
    }
    for i in 0..set.samples {
        for t in set.sample(g, i) {
            eat(&t.data.to_le_bytes());
        }
    }
    eat(method.map_or("auto".to_string(), |m| m.to_string()).as_bytes());
    format!("{h:016x}")
}

fn bad(path: &Path, msg: &str) -> QuantError {
    QuantError::Calibration {
        path: path.to_path_buf(),
        msg: format!("calibration cache: {msg}"),
    }
}

/// The cached ranges if `path` exists and was made for `key`.
pub fn load(path: &Path, g: &Graph, key: &str) -> Result<Option<(Ranges, Method)>, QuantError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    if lines.next() != Some(&format!("kiln-calibration v1 {key}")) {
        return Ok(None);
    }
    let second = lines.next().unwrap_or_default();
    let samples = second
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(path, "malformed second line"))?;
    let method = Method::parse(second.split(' ').next().unwrap_or_default())
        .ok_or_else(|| bad(path, "unknown method on the second line"))?;
    let mut r = Ranges {
        samples,
        ..Default::default()
    };
    for line in lines {
        let mut it = line.splitn(3, ' ');
        let (Some(lo), Some(hi), Some(name)) = (it.next(), it.next(), it.next()) else {
            return Err(bad(path, &format!("malformed line `{line}`")));
        };
        let (Ok(lo), Ok(hi)) = (lo.parse::<f32>(), hi.parse::<f32>()) else {
            return Err(bad(path, &format!("malformed line `{line}`")));
        };
        let v = g
            .value_by_name(name)
            .ok_or_else(|| bad(path, &format!("no value `{name}` in the model")))?;
        r.by_value.insert(v, (lo, hi));
    }
    Ok(Some((r, method)))
}

pub fn store(path: &Path, g: &Graph, key: &str, method: Method, r: &Ranges) -> Result<(), QuantError> {
    let mut rows: Vec<(String, f32, f32)> = r
        .by_value
        .iter()
        .map(|(&v, &(lo, hi))| (g.value(v).name.clone(), lo, hi))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = format!("kiln-calibration v1 {key}\n{method} {}\n", r.samples);
    for (name, lo, hi) in rows {
        let _ = writeln!(s, "{lo:e} {hi:e} {name}");
    }
    crate::fsutil::write_atomic(path, s.as_bytes()).map_err(|e| bad(path, &e.to_string()))
}
