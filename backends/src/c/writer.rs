//! Text helpers for the C backend: literals that round-trip exactly, loop nests over
//! static shapes with constant strides, and indentation.

use std::fmt::Write;

/// An f32 as a C literal that reads back to the same value: the shortest decimal that
/// round-trips, or `INFINITY` / `NAN` from `math.h` (every generated file includes it),
/// which C99 gives as constant expressions.
pub fn f32_lit(v: f32) -> String {
    if v.is_nan() {
        return if v.is_sign_negative() { "(-NAN)" } else { "NAN" }.into();
    }
    if v.is_infinite() {
        return if v < 0.0 { "(-INFINITY)" } else { "INFINITY" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0f" } else { "0.0f" }.into();
    }
    format!("{v:e}f")
}

/// `static const <ty> <name>[n] = { ... };` with `per_line` values per line.
pub fn array(out: &mut String, qualifiers: &str, ty: &str, name: &str, items: &[String]) {
    let _ = writeln!(out, "{qualifiers}{ty} {name}[{}] = {{", items.len().max(1));
    for chunk in items.chunks(8) {
        let _ = writeln!(out, "    {},", chunk.join(", "));
    }
    if items.is_empty() {
        let _ = writeln!(out, "    0,");
    }
    let _ = writeln!(out, "}};");
}

/// Nested `for` loops over `dims` (index variables `i0`, `i1`, ...); `body` receives, for
/// every operand, the C expression of its element offset.
pub fn nest(out: &mut String, indent: usize, dims: &[usize], strides: &[Vec<i64>], body: &dyn Fn(&[String]) -> String) {
    let pad = |k: usize| "    ".repeat(k);
    for (d, &n) in dims.iter().enumerate() {
        let _ = writeln!(out, "{}for (int32_t i{d} = 0; i{d} < {n}; ++i{d}) {{", pad(indent + d));
    }
    let offs: Vec<String> = strides
        .iter()
        .map(|st| {
            let terms: Vec<String> = st
                .iter()
                .enumerate()
                .filter(|(_, s)| **s != 0)
                .map(|(d, &s)| if s == 1 { format!("i{d}") } else { format!("i{d} * {s}") })
                .collect();
            if terms.is_empty() {
                "0".into()
            } else {
                terms.join(" + ")
            }
        })
        .collect();
    for line in body(&offs).lines() {
        let _ = writeln!(out, "{}{line}", pad(indent + dims.len()));
    }
    for d in (0..dims.len()).rev() {
        let _ = writeln!(out, "{}}}", pad(indent + d));
    }
}

/// The window geometry every windowed C kernel spells the same way: for output row `oy`
/// and kernel row `ky` of plane `p`, the statement setting input row `iy` and skipping
/// (`continue`) a row in the padding; `input_col` the same for `ox`, `kx` and `ix`.
pub fn input_row(p: &kiln_runtime::kernels::Plane) -> String {
    format!(
        "int32_t iy = oy * {} + ky * {} - {};\nif (iy < 0 || iy >= {}) continue;",
        p.sh, p.dh, p.ph, p.h
    )
}

/// See [`input_row`].
pub fn input_col(p: &kiln_runtime::kernels::Plane) -> String {
    format!(
        "int32_t ix = ox * {} + kx * {} - {};\nif (ix < 0 || ix >= {}) continue;",
        p.sw, p.dw, p.pw, p.w
    )
}

/// `text` with every line indented by `depth` levels.
pub fn indent(text: &str, depth: usize) -> String {
    let pad = "    ".repeat(depth);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}
