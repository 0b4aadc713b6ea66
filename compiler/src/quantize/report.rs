//! Accuracy of a quantized graph against its float original, layer by layer: each integer
//! value `v:q` is dequantized with its type's scale and zero point and compared with the
//! float value `v` it stands for, and each float value computed under the name of a float
//! original (the result of a hybrid or float16 layer, a layer kept in float) with that
//! original, as a signal-to-quantization-noise ratio accumulated over all samples given.

use kiln_ir::{Graph, QParams, Tensor, ValueDef};
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
            let (name, (scale, zero_point)) = match (val.name.strip_suffix(":q"), &val.ty.dtype.quant) {
                (Some(name), Some(QParams::PerTensor { scale, zero_point })) => {
                    (name, (*scale as f64, *zero_point as f64))
                }
                (None, None) if t.data.scalar().is_float() && matches!(val.def, ValueDef::Node(..)) => {
                    (val.name.as_str(), (1.0, 0.0))
                }
                _ => return,
            };
            let Some(f) = fvals.get(name) else {
                return;
            };
            let e = acc.entry(name.to_string()).or_insert_with(|| {
                order.push(name.to_string());
                (0.0, 0.0)
            });
            for (&qi, &fi) in t.to_f64_vec().iter().zip(f) {
                let d = (qi - zero_point) * scale;
                e.0 += fi * fi;
                e.1 += (d - fi) * (d - fi);
            }
        })?;
    }
    Ok(order
        .into_iter()
        .map(|n| {
            let (s, e) = acc[&n];
            let db = if e == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (s.max(1e-30) / e).log10()
            };
            (n, db)
        })
        .collect())
}
