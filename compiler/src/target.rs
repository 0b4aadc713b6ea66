//! Where generated code runs. A target is a triple, which drives Cranelift and the C
//! backend's storage choices (flash loads on AVR), plus, for a microcontroller, the part's
//! memory sizes: a model that cannot fit is refused when it is compiled, with the numbers,
//! rather than at link time or, worse, on the device.

use std::fmt;
use std::str::FromStr;
use target_lexicon::{Architecture, Triple};

/// A microcontroller part and the memory a model may use on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mcu {
    pub name: &'static str,
    /// Program memory in bytes (weights and code).
    pub flash: usize,
    /// Data memory in bytes (arena, stack, and on von Neumann parts nothing else of ours).
    pub ram: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub triple: Triple,
    pub mcu: Option<Mcu>,
    /// CPU features native objects may assume beyond the portable default, as
    /// `--target-cpu` spells them (`native`, `x86-64-v3`, `+avx512vnni,...`).
    pub cpu: Option<String>,
}

/// Parts known by name: (name, triple, flash, RAM). `avr` means the first.
const MCUS: &[(&str, &str, usize, usize)] = &[
    ("atmega328p", "avr-unknown-unknown", 32 * 1024, 2 * 1024),
    ("atmega2560", "avr-unknown-unknown", 256 * 1024, 8 * 1024),
    // A typical Cortex-M4F part (STM32F405-class: 1 MiB flash, 128 KiB main SRAM).
    ("cortex-m4", "thumbv7em-none-eabihf", 1024 * 1024, 128 * 1024),
    // STM32F746-class Cortex-M7 (1 MiB flash, 320 KiB SRAM).
    ("cortex-m7", "thumbv7em-none-eabihf", 1024 * 1024, 320 * 1024),
    // STM32L552-class Cortex-M33 with the DSP extension (512 KiB flash, 256 KiB SRAM).
    ("cortex-m33", "thumbv8m.main-none-eabihf", 512 * 1024, 256 * 1024),
    // LPC1768-class Cortex-M3, no DSP extension (512 KiB flash, 64 KiB SRAM).
    ("cortex-m3", "thumbv7m-none-eabi", 512 * 1024, 64 * 1024),
];

impl Target {
    pub fn host() -> Target {
        Target {
            triple: Triple::host(),
            mcu: None,
            cpu: None,
        }
    }

    /// Parses `host`, a part name (`atmega328p`, `atmega2560`, `avr`, `cortex-m4`) or a triple.
    pub fn parse(s: &str) -> Option<Target> {
        if s == "host" {
            return Some(Target::host());
        }
        let name = if s == "avr" { "atmega328p" } else { s };
        if let Some(&(name, triple, flash, ram)) = MCUS.iter().find(|m| m.0 == name) {
            return Some(Target {
                triple: Triple::from_str(triple).ok()?,
                mcu: Some(Mcu { name, flash, ram }),
                cpu: None,
            });
        }
        let triple = Triple::from_str(s).ok()?;
        // A bare architecture such as `x86_64` parses; insist on a known one.
        (triple.architecture != Architecture::Unknown).then_some(Target {
            triple,
            mcu: None,
            cpu: None,
        })
    }

    /// This target with native objects assuming the CPU features `spec` names.
    pub fn with_cpu(mut self, spec: Option<&str>) -> Target {
        self.cpu = spec.map(str::to_string);
        self
    }

    /// The names `parse` accepts besides triples, for error messages.
    pub fn known_names() -> String {
        let mut v = vec!["host", "avr"];
        v.extend(MCUS.iter().map(|m| m.0));
        v.join(", ")
    }

    /// Harvard parts, where constants must be placed in and read from program memory.
    pub fn is_avr(&self) -> bool {
        self.triple.architecture == Architecture::Avr
    }

    /// A 32-bit Arm M-profile part (`thumbv6m`..`thumbv8m.main`).
    pub fn is_cortex_m(&self) -> bool {
        let a = self.triple.architecture.to_string();
        a.starts_with("thumbv6m")
            || a.starts_with("thumbv7m")
            || a.starts_with("thumbv7em")
            || a.starts_with("thumbv8m")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mcu {
            Some(m) => write!(f, "{} ({})", m.name, self.triple),
            None => write!(f, "{}", self.triple),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_triples() {
        let t = Target::parse("avr").unwrap();
        assert!(t.is_avr());
        assert_eq!(t.mcu.as_ref().unwrap().ram, 2048);
        assert_eq!(Target::parse("atmega2560").unwrap().mcu.unwrap().flash, 262144);
        let m4 = Target::parse("cortex-m4").unwrap();
        assert!(!m4.is_avr());
        assert_eq!(m4.triple.to_string(), "thumbv7em-none-eabihf");
        let x = Target::parse("aarch64-unknown-linux-gnu").unwrap();
        assert!(x.mcu.is_none());
        assert!(Target::parse("pdp11-bogus").is_none());
        assert!(Target::parse("atmega9999").is_none());
    }
}
