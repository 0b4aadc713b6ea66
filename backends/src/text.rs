//! Model-controlled strings (value, node and port names, the source path) made safe to place
//! inside a comment of generated C, Rust or CLIF.
//!
//! A name can hold anything: a comment terminator, a newline that ends a `//` comment, a
//! trailing backslash that splices the next line into it, a C99 trigraph (`??/` is a
//! backslash), a bare carriage return (an error in a Rust doc comment) or bidirectional
//! controls that make a reader see other code than the compiler does. Rather than chase each
//! case per language, the output is printable ASCII in which none of those sequences can
//! form: every other character, and every character that starts one of them, is written as
//! a `\u{..}` escape, so the name stays readable and unambiguous.

/// Longest name (in characters of the input) written in full; longer ones are cut with `...`.
const MAX_CHARS: usize = 160;

/// `s` as comment text for C (`/* */` and `//`), Rust (`//`, `///`) and CLIF (`;`).
pub fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(4 * MAX_CHARS));
    let mut prev = '\0';
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str("...");
            break;
        }
        let risky = match c {
            // `*/` and `/*` in C, `??x` trigraphs: escape the second character of the pair.
            '/' => prev == '*',
            '*' => prev == '/',
            '?' => prev == '?',
            '\\' | '`' => true,
            ' '..='~' => false,
            _ => true,
        };
        if risky {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
            // An escape ends in `}`, which pairs with nothing.
            prev = '}';
        } else {
            out.push(c);
            prev = c;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::comment;

    #[test]
    fn plain_names_stay_as_they_are() {
        assert_eq!(comment("conv2d/BiasAdd:0"), "conv2d/BiasAdd:0");
        assert_eq!(comment("a b-c_d.e"), "a b-c_d.e");
    }

    #[test]
    fn no_sequence_can_end_or_open_a_comment() {
        let hostile = "x */ int f(void) { return 42; } /* // \\\n\r ??/ ?? *// `a` \u{202e}é";
        let s = comment(hostile);
        for bad in ["*/", "/*", "??", "\n", "\r", "`"] {
            assert!(!s.contains(bad), "{bad:?} in {s}");
        }
        assert!(s.chars().all(|c| (' '..='~').contains(&c)), "{s}");
        // A backslash only ever starts an escape, never ends the text or precedes a newline.
        assert!(s.match_indices('\\').all(|(i, _)| s[i..].starts_with("\\u{")), "{s}");
        assert!(s.contains("\\u{202e}") && s.contains("\\u{e9}"), "{s}");
    }

    #[test]
    fn long_names_are_cut() {
        let s = comment(&"n".repeat(100_000));
        assert!(s.len() < 200 && s.ends_with("..."), "{}", s.len());
    }
}
