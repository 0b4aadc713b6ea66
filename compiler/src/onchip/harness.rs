//! The bare-metal program around a generated model: inputs copied from flash, `KILN_RUNS`
//! calls of the entry point, then the return code, the output bytes and the peak stack depth
//! (from painting free RAM), in hex, on the console (AVR: GPIOR0; Cortex-M: semihosting).

use super::Part;
use kiln_ir::{Graph, Tensor, ValueId};
use std::fmt::Write;

/// The values the program reads back: the graph's outputs, or with `int` those of its
/// integer entry point `model_run_int` (the integers before each output's Dequantize).
pub fn read_back(g: &Graph, int: bool) -> Vec<ValueId> {
    match kiln_backends::header::int_boundary(g) {
        Some(api) if int => api.outputs.iter().map(|q| q.value).collect(),
        _ => g.outputs().to_vec(),
    }
}

/// The console and stack helpers of a part, before the model header.
fn prelude(part: Part) -> &'static str {
    if part.is_avr() {
        concat!(
            "#include <avr/io.h>\n#include <avr/interrupt.h>\n#include <avr/pgmspace.h>\n#include <avr/sleep.h>\n",
            "#define ROM PROGMEM\n#define rom_copy memcpy_P\nextern uint8_t __heap_start;\n",
            "static void put(char ch) { GPIOR0 = (uint8_t)ch; }\nstatic void flush(void) {}\n",
            "static uint8_t *stack_low(void) { return &__heap_start; }\nstatic uintptr_t stack_top(void) { return RAMEND + 1; }\n",
            "static uintptr_t sp(void) { return SP; }\n",
        )
    } else {
        concat!(
            "#define ROM\n#define rom_copy memcpy\nvoid kiln_puts(const char *s);\nextern uint32_t __stack_top[];\n",
            "static char buf[1024];\nstatic size_t len;\n",
            "static void flush(void) { buf[len] = 0; kiln_puts(buf); len = 0; }\n",
            "static void put(char ch) { if (len + 1 >= sizeof buf) flush(); buf[len++] = ch; }\n",
            "static uintptr_t sp(void) { uintptr_t v; __asm__ volatile(\"mov %0, sp\" : \"=r\"(v)); return v; }\n",
            "static uint8_t *stack_low(void) { return (uint8_t *)(sp() - 65536); }\n",
            "static uintptr_t stack_top(void) { return (uintptr_t)__stack_top; }\n",
        )
    }
}

/// The program's `main.c` for `inputs` (the entry point's own buffers: integer ones for
/// `int`).
pub fn main_c(part: Part, g: &Graph, inputs: &[Tensor], int: bool) -> String {
    let mut c = String::from("#include <stddef.h>\n#include <stdint.h>\n#include <string.h>\n");
    c += prelude(part);
    c += "#include \"model.h\"\n#ifndef KILN_RUNS\n#define KILN_RUNS 1\n#endif\n";
    for (i, t) in inputs.iter().enumerate() {
        let v: Vec<String> = t.data.to_le_bytes().iter().map(|b| b.to_string()).collect();
        let _ = writeln!(
            c,
            "static const uint8_t in{i}_rom[] ROM = {{{}}};\nstatic uint8_t in{i}[sizeof in{i}_rom] __attribute__((aligned(8)));",
            v.join(",")
        );
    }
    let outs = read_back(g, int);
    for (i, &v) in outs.iter().enumerate() {
        let _ = writeln!(
            c,
            "static uint8_t out{i}[{}] __attribute__((aligned(8)));",
            g.value(v).ty.bytes().max(1)
        );
    }
    c += "static uint8_t arena[MODEL_ARENA_SIZE] __attribute__((aligned(MODEL_ARENA_ALIGN)));\n";
    c += "static void hex(uint16_t v, int digits) { while (digits--) put(\"0123456789abcdef\"[(v >> (4 * digits)) & 15]); }\n";
    c += "int main(void) {\n  volatile uint8_t *p;\n  int rc = 0;\n";
    c += "  for (p = stack_low(); (uintptr_t)p < sp() - 64; ++p) *p = 0xa5;\n";
    for i in 0..inputs.len() {
        let _ = writeln!(c, "  rom_copy(in{i}, in{i}_rom, sizeof in{i});");
    }
    let mut args: Vec<String> = (0..inputs.len()).map(|i| format!("(const void *)in{i}")).collect();
    args.extend((0..outs.len()).map(|i| format!("(void *)out{i}")));
    let entry = if int { "model_run_int" } else { "model_run" };
    if part.is_avr() {
        c += "  GPIOR1 = 1;\n";
    }
    let _ = writeln!(
        c,
        "  for (int r = 0; r < KILN_RUNS; ++r) rc |= {entry}({}, arena);",
        args.join(", ")
    );
    if part.is_avr() {
        c += "  GPIOR1 = 2;\n";
    }
    c += "  put('K'); put('\\n'); hex((uint16_t)rc, 2); put('\\n');\n";
    for (i, &v) in outs.iter().enumerate() {
        let n = g.value(v).ty.bytes();
        let _ = writeln!(
            c,
            "  for (size_t i = 0; i < {n}u; ++i) hex(out{i}[i], 2);\n  put('\\n');"
        );
    }
    c += "  for (p = stack_low(); *p == 0xa5; ++p) {}\n  hex((uint16_t)(stack_top() - (uintptr_t)p), 4);\n  put('\\n');\n  flush();\n";
    if part.is_avr() {
        c += "  cli();\n  sleep_cpu();\n";
    }
    c += "  return 0;\n}\n";
    c
}

/// The linker script of a Cortex-M board: its code and data memories (4 MiB each on QEMU's
/// boards; the part's real limits are checked when the model is compiled). Constants stay
/// in flash (.rodata), as on a real part.
pub fn linker_script(flash: u32, ram: u32) -> String {
    format!(
        "MEMORY {{\n    FLASH (rx)  : ORIGIN = {flash:#010x}, LENGTH = 4M\n    RAM   (rwx) : ORIGIN = {ram:#010x}, LENGTH = 4M\n}}\n{}",
        include_str!("sections.ld")
    )
}
