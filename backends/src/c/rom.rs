//! Weights in program memory for Harvard-architecture parts (AVR). There a plain
//! `static const` array is copied into the 2 KB of RAM at start-up, so weights must live
//! in flash (`PROGMEM`) and every read of one must go through a flash load. Kernels are
//! written once, for ordinary memory; this pass rewrites a kernel body's reads of its
//! constant inputs (`xN[e]` becomes `kiln_ld_T(&xN[e])`) and refuses any other use of
//! such a pointer, so a kernel that would read flash through a data pointer cannot slip
//! through.

/// Declarations the rewritten kernels call: one flash load per C element type.
pub const PRELUDE: &str = r#"#include <avr/pgmspace.h>
#include <string.h>
#define KILN_ROM PROGMEM
#define kiln_rom_i32(p) ((int32_t)pgm_read_dword(p))
#define kiln_rom_i8(p) ((int8_t)pgm_read_byte(p))
#define kiln_rom_u8(p) pgm_read_byte(p)
#define kiln_rom_i16(p) ((int16_t)pgm_read_word(p))
#define kiln_rom_f32(p) pgm_read_float(p)
#define kiln_mul8(x, w) ((int16_t)((int16_t)(x) * (int16_t)(w)))
static inline float kiln_ld_float(const float *p) { return pgm_read_float(p); }
static inline int8_t kiln_ld_int8_t(const int8_t *p) { return (int8_t)pgm_read_byte(p); }
static inline uint8_t kiln_ld_uint8_t(const uint8_t *p) { return pgm_read_byte(p); }
static inline int16_t kiln_ld_int16_t(const int16_t *p) { int16_t v; memcpy_P(&v, p, sizeof v); return v; }
static inline uint16_t kiln_ld_uint16_t(const uint16_t *p) { return pgm_read_word(p); }
static inline int32_t kiln_ld_int32_t(const int32_t *p) { int32_t v; memcpy_P(&v, p, sizeof v); return v; }
static inline uint32_t kiln_ld_uint32_t(const uint32_t *p) { return pgm_read_dword(p); }
static inline int64_t kiln_ld_int64_t(const int64_t *p) { int64_t v; memcpy_P(&v, p, sizeof v); return v; }
static inline uint64_t kiln_ld_uint64_t(const uint64_t *p) { uint64_t v; memcpy_P(&v, p, sizeof v); return v; }
"#;

/// Rewrites every read `name[e]` in `body` into `kiln_ld_<ty>(&name[e])`, for each
/// `(name, ty)` in `rom`; packed weights (`ty` `w4` or `w2`, see `kiln_runtime::pack_weights`)
/// become `kiln_ld_<ty>(name, e)`, since their elements have no address. Fails with the
/// pointer's name when one is used other than by subscript (pointer arithmetic, passing it
/// on), which the rewrite cannot follow.
pub fn rewrite(body: &str, rom: &[(String, &str)]) -> Result<String, String> {
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len() + 64);
    let end = scan(&chars, 0, rom, &mut out, false)?;
    debug_assert_eq!(end, chars.len());
    Ok(out)
}

/// Copies `s[i..]` to `out` with reads rewritten; inside a subscript (`nested`) stops
/// at the `]` that closes it and returns its index.
fn scan(s: &[char], mut i: usize, rom: &[(String, &str)], out: &mut String, nested: bool) -> Result<usize, String> {
    let mut depth = 0usize;
    while i < s.len() {
        let c = s[i];
        if nested {
            match c {
                '[' => depth += 1,
                ']' if depth == 0 => return Ok(i),
                ']' => depth -= 1,
                _ => {}
            }
        }
        let starts_ident = (c.is_ascii_alphabetic() || c == '_') && (i == 0 || !is_ident(s[i - 1]));
        if starts_ident {
            let mut j = i;
            while j < s.len() && is_ident(s[j]) {
                j += 1;
            }
            let word: String = s[i..j].iter().collect();
            if let Some((_, ty)) = rom.iter().find(|(n, _)| *n == word) {
                if s.get(j) != Some(&'[') {
                    return Err(word);
                }
                let packed = matches!(*ty, "w4" | "w2");
                if packed {
                    out.push_str(&format!("kiln_ld_{ty}({word}, ("));
                } else {
                    out.push_str(&format!("kiln_ld_{ty}(&{word}["));
                }
                let close = scan(s, j + 1, rom, out, true)?;
                out.push_str(if packed { "))" } else { "])" });
                i = close + 1;
            } else {
                out.push_str(&word);
                i = j;
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    if nested {
        return Err("unbalanced `[`".into());
    }
    Ok(i)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn rewrites_nested_reads_and_rejects_other_uses() {
        let rom = vec![("x1".to_string(), "float"), ("x2".to_string(), "int32_t")];
        let got = rewrite("y0[i] = x0[i] * x1[x2[j] + k[1]] + ax1[0];", &rom).unwrap();
        assert_eq!(
            got,
            "y0[i] = x0[i] * kiln_ld_float(&x1[kiln_ld_int32_t(&x2[j]) + k[1]]) + ax1[0];"
        );
        assert_eq!(rewrite("const float *p = x1 + 4;", &rom), Err("x1".to_string()));
    }
}
