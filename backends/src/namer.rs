//! Turns ONNX names (any UTF-8, often with `/`, `:` and dots) into unique identifiers that
//! are valid — and not reserved — in C and Rust.

use std::collections::HashSet;

/// Reserved words of C99 and Rust 2021 (both languages read the same names).
const RESERVED: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "_Bool",
    "_Complex",
    "_Imaginary",
    "as",
    "async",
    "await",
    "crate",
    "dyn",
    "false",
    "fn",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "self",
    "Self",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "abstract",
    "become",
    "box",
    "final",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "arena",
    "main",
];

#[derive(Default)]
pub struct Namer {
    used: HashSet<String>,
}

impl Namer {
    /// A fresh identifier derived from `raw`.
    pub fn name(&mut self, raw: &str) -> String {
        let mut s: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        while s.contains("__") {
            s = s.replace("__", "_");
        }
        let s = s.trim_matches('_').to_string();
        let mut s = if s.is_empty() { "v".to_string() } else { s };
        if s.as_bytes()[0].is_ascii_digit() || RESERVED.contains(&s.as_str()) {
            s = format!("v_{s}");
        }
        let mut candidate = s.clone();
        let mut k = 1;
        while self.used.contains(&candidate) {
            candidate = format!("{s}_{k}");
            k += 1;
        }
        self.used.insert(candidate.clone());
        candidate
    }
}
