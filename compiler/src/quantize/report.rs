//! Accuracy of a quantized graph against its float original, layer by layer: each integer
//! value `v:q` is dequantized with its type's scale and zero point and compared with the
//! float value `v` it stands for, as a signal-to-quantization-noise ratio accumulated over
//! all samples given.

use kiln_ir::{Graph, QParams, Tensor};
use std::collections::HashMap;

/// Per-layer SQNR in dB, in the quantized graph's node order: (value name, dB).
pub fn layer_sqnr(
    float: &Graph,
    int8: &Graph,
    samples: &[Vec<Tensor>],
) -> Result<Vec<(String, f64)>, kiln_ir::IrError> {
    let mut acc: HashMap<String, (f64, f64)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for inputs in samples {
        let mut fvals: HashMap<String, Vec<f64>> = HashMap::new();
        kiln_ir::eval::run_observed(float, inputs, |v, t| {
            if t.data.scalar().is_float() {
                fvals.insert(float.value(v).name.clone(), t.to_f64_vec());
            }
        })?;
        kiln_ir::eval::run_observed(int8, inputs, |v, t| {
            let val = int8.value(v);
            let Some(name) = val.name.strip_suffix(":q") else {
                return;
            };
            let (Some(QParams::PerTensor { scale, zero_point }), Some(f)) = (&val.ty.dtype.quant, fvals.get(name))
            else {
                return;
            };
            let q = t.to_f64_vec();
            let e = acc.entry(name.to_string()).or_insert_with(|| {
                order.push(name.to_string());
                (0.0, 0.0)
            });
            for (&qi, &fi) in q.iter().zip(f) {
                let d = (qi - *zero_point as f64) * *scale as f64;
                e.0 += fi * fi;
                e.1 += (d - fi) * (d - fi);
            }
        })?;
    }
    Ok(order
        .into_iter()
        .map(|n| {
            let (s, e) = acc[&n];
            (n, 10.0 * (s.max(1e-30) / e.max(1e-30)).log10())
        })
        .collect())
}
