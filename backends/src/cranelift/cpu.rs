//! Which CPU features a native object assumes (`--target-cpu`), and the check that makes
//! `<prefix>_run` return [`ERR_CPU`] on a CPU without them instead of dying on an illegal
//! instruction. The default stays portable: x86-64-v2 on x86-64, the base ISA elsewhere.
//!
//! The check runs once per process (its result is cached in a writable word) and reads the
//! CPU itself: `CPUID` and `XGETBV` on x86-64 (two tiny helper functions written as machine
//! code, since CLIF has no such instructions), `getauxval(AT_HWCAP)` on AArch64 Linux.

use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I8, I32, I64};
use cranelift_codegen::ir::{
    AbiParam, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind, UserFuncName,
};
use cranelift_codegen::isa::{self, CallConv};
use cranelift_codegen::settings::Configurable;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, FuncId, Linkage, Module};
use cranelift_object::ObjectModule;
use target_lexicon::{Architecture, OperatingSystem, Triple};

/// What `<prefix>_run` returns on a CPU that lacks a feature the object assumes.
pub const ERR_CPU: i32 = -2;

/// An x86-64 feature: its name (as rustc and `-C target-feature` spell it), Cranelift's
/// flag, where CPUID reports it (leaf, subleaf, register 0..4 = EAX..EDX, bit), and the
/// XCR0 state bits the OS must enable for its registers.
struct X86 {
    name: &'static str,
    flag: &'static str,
    leaf: u32,
    sub: u32,
    reg: u8,
    bit: u8,
    xcr0: u64,
}

/// Not a Cranelift feature: the 256-bit kernels' binary16 widening (`vcvtph2ps`) needs it,
/// and every CPU with AVX2 has it (x86-64-v3 includes it), so an object assuming AVX2
/// assumes and checks F16C too.
const F16C: X86 = X86 {
    name: "f16c",
    flag: "",
    leaf: 1,
    sub: 0,
    reg: 2,
    bit: 29,
    xcr0: AVX,
};

const AVX: u64 = 0x6;
const AVX512: u64 = 0xe6;

#[rustfmt::skip]
const X86_FEATURES: &[X86] = &[
    X86 { name: "sse3", flag: "has_sse3", leaf: 1, sub: 0, reg: 2, bit: 0, xcr0: 0 },
    X86 { name: "ssse3", flag: "has_ssse3", leaf: 1, sub: 0, reg: 2, bit: 9, xcr0: 0 },
    X86 { name: "fma", flag: "has_fma", leaf: 1, sub: 0, reg: 2, bit: 12, xcr0: AVX },
    X86 { name: "cmpxchg16b", flag: "has_cmpxchg16b", leaf: 1, sub: 0, reg: 2, bit: 13, xcr0: 0 },
    X86 { name: "sse4.1", flag: "has_sse41", leaf: 1, sub: 0, reg: 2, bit: 19, xcr0: 0 },
    X86 { name: "sse4.2", flag: "has_sse42", leaf: 1, sub: 0, reg: 2, bit: 20, xcr0: 0 },
    X86 { name: "popcnt", flag: "has_popcnt", leaf: 1, sub: 0, reg: 2, bit: 23, xcr0: 0 },
    X86 { name: "avx", flag: "has_avx", leaf: 1, sub: 0, reg: 2, bit: 28, xcr0: AVX },
    X86 { name: "bmi1", flag: "has_bmi1", leaf: 7, sub: 0, reg: 1, bit: 3, xcr0: 0 },
    X86 { name: "avx2", flag: "has_avx2", leaf: 7, sub: 0, reg: 1, bit: 5, xcr0: AVX },
    X86 { name: "bmi2", flag: "has_bmi2", leaf: 7, sub: 0, reg: 1, bit: 8, xcr0: 0 },
    X86 { name: "avx512f", flag: "has_avx512f", leaf: 7, sub: 0, reg: 1, bit: 16, xcr0: AVX512 },
    X86 { name: "avx512dq", flag: "has_avx512dq", leaf: 7, sub: 0, reg: 1, bit: 17, xcr0: AVX512 },
    X86 { name: "avx512vl", flag: "has_avx512vl", leaf: 7, sub: 0, reg: 1, bit: 31, xcr0: AVX512 },
    X86 { name: "avx512vbmi", flag: "has_avx512vbmi", leaf: 7, sub: 0, reg: 2, bit: 1, xcr0: AVX512 },
    X86 { name: "avx512vnni", flag: "has_avx512vnni", leaf: 7, sub: 0, reg: 2, bit: 11, xcr0: AVX512 },
    X86 { name: "avx512bitalg", flag: "has_avx512bitalg", leaf: 7, sub: 0, reg: 2, bit: 12, xcr0: AVX512 },
    X86 { name: "avxvnni", flag: "has_avx_vnni", leaf: 7, sub: 1, reg: 0, bit: 4, xcr0: AVX },
    X86 { name: "lzcnt", flag: "has_lzcnt", leaf: 0x8000_0001, sub: 0, reg: 2, bit: 5, xcr0: 0 },
];

/// An AArch64 feature: name, Cranelift's flag, and its `getauxval` word (`AT_HWCAP` 16 or
/// `AT_HWCAP2` 26) and bit.
#[rustfmt::skip]
const ARM_FEATURES: &[(&str, &str, u64, u8)] = &[
    ("lse", "has_lse", 16, 8),
    ("fp16", "has_fp16", 16, 10),
    ("dotprod", "has_dotprod", 16, 20),
    ("i8mm", "has_i8mm", 26, 13),
];

/// x86-64 microarchitecture levels, as `-C target-cpu` names them: each adds its features
/// to the levels before it.
const X86_LEVELS: &[(&str, &[&str])] = &[
    (
        "x86-64-v2",
        &["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b"],
    ),
    ("x86-64-v3", &["avx", "avx2", "bmi1", "bmi2", "fma", "lzcnt"]),
    ("x86-64-v4", &["avx512f", "avx512dq", "avx512vl"]),
];

/// The feature names `apply` knows for `arch`.
pub fn known(arch: Architecture) -> Vec<&'static str> {
    match arch {
        Architecture::X86_64 => X86_FEATURES.iter().map(|f| f.name).collect(),
        Architecture::Aarch64(_) => ARM_FEATURES.iter().map(|f| f.0).collect(),
        _ => Vec::new(),
    }
}

fn flag_of(arch: Architecture, name: &str) -> Option<&'static str> {
    let name = match name {
        "sse41" => "sse4.1",
        "sse42" => "sse4.2",
        "avx_vnni" => "avxvnni",
        n => n,
    };
    match arch {
        Architecture::X86_64 => X86_FEATURES.iter().find(|f| f.name == name).map(|f| f.flag),
        Architecture::Aarch64(_) => ARM_FEATURES.iter().find(|f| f.0 == name).map(|f| f.1),
        _ => None,
    }
}

/// The features of the machine running the compiler that Cranelift can use.
fn host_features(arch: Architecture) -> Result<Vec<&'static str>, String> {
    if arch != Triple::host().architecture {
        return Err(format!(
            "`native` describes this machine ({}), not the target",
            Triple::host().architecture
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let has = |n: &str| match n {
            "sse3" => std::is_x86_feature_detected!("sse3"),
            "ssse3" => std::is_x86_feature_detected!("ssse3"),
            "fma" => std::is_x86_feature_detected!("fma"),
            "cmpxchg16b" => std::is_x86_feature_detected!("cmpxchg16b"),
            "sse4.1" => std::is_x86_feature_detected!("sse4.1"),
            "sse4.2" => std::is_x86_feature_detected!("sse4.2"),
            "popcnt" => std::is_x86_feature_detected!("popcnt"),
            "avx" => std::is_x86_feature_detected!("avx"),
            "bmi1" => std::is_x86_feature_detected!("bmi1"),
            "avx2" => std::is_x86_feature_detected!("avx2"),
            "bmi2" => std::is_x86_feature_detected!("bmi2"),
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            "avx512dq" => std::is_x86_feature_detected!("avx512dq"),
            "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
            "avx512vbmi" => std::is_x86_feature_detected!("avx512vbmi"),
            "avx512vnni" => std::is_x86_feature_detected!("avx512vnni"),
            "avx512bitalg" => std::is_x86_feature_detected!("avx512bitalg"),
            "avxvnni" => std::is_x86_feature_detected!("avxvnni"),
            "lzcnt" => std::is_x86_feature_detected!("lzcnt"),
            _ => false,
        };
        Ok(X86_FEATURES.iter().map(|f| f.name).filter(|n| has(n)).collect())
    }
    #[cfg(target_arch = "aarch64")]
    {
        let has = |n: &str| match n {
            "lse" => std::arch::is_aarch64_feature_detected!("lse"),
            "fp16" => std::arch::is_aarch64_feature_detected!("fp16"),
            "dotprod" => std::arch::is_aarch64_feature_detected!("dotprod"),
            "i8mm" => std::arch::is_aarch64_feature_detected!("i8mm"),
            _ => false,
        };
        Ok(ARM_FEATURES.iter().map(|f| f.0).filter(|n| has(n)).collect())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    Ok(Vec::new())
}

/// Enables on `builder` the features `spec` names: comma-separated items, each `native`,
/// an x86-64 level (`x86-64-v2`, `-v3`, `-v4`) or `+feature` (`-feature` takes one away).
pub fn apply(builder: &mut isa::Builder, triple: &Triple, spec: &str) -> Result<(), String> {
    let arch = triple.architecture;
    let mut on: Vec<&str> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "native" {
            on.extend(host_features(arch)?);
        } else if let Some(at) = X86_LEVELS.iter().position(|l| l.0 == item) {
            if arch != Architecture::X86_64 {
                return Err(format!("`{item}` is an x86-64 level; the target is {arch}"));
            }
            on.extend(X86_LEVELS[..=at].iter().flat_map(|l| l.1.iter()));
        } else if let Some(f) = item.strip_prefix('+') {
            on.push(f);
        } else if let Some(f) = item.strip_prefix('-') {
            flag_of(arch, f).ok_or_else(|| unknown(arch, f))?;
            on.retain(|&x| flag_of(arch, x) != flag_of(arch, f));
            builder
                .set(flag_of(arch, f).unwrap_or_default(), "false")
                .map_err(|e| e.to_string())?;
        } else {
            return Err(format!(
                "`{item}`: expected `native`, an x86-64 level (x86-64-v2, x86-64-v3, x86-64-v4) or +feature"
            ));
        }
    }
    for f in on {
        let flag = flag_of(arch, f).ok_or_else(|| unknown(arch, f))?;
        builder.enable(flag).map_err(|e| format!("{f}: {e}"))?;
    }
    Ok(())
}

fn unknown(arch: Architecture, f: &str) -> String {
    let k = known(arch);
    if k.is_empty() {
        format!("no CPU features can be chosen for {arch} (`{f}`)")
    } else {
        format!("unknown {arch} feature `{f}` (known: {})", k.join(", "))
    }
}

/// The features the finished ISA assumes, by name, in table order.
pub fn assumed(isa: &dyn isa::TargetIsa) -> Vec<&'static str> {
    let arch = isa.triple().architecture;
    let on: Vec<&str> = isa
        .isa_flags()
        .iter()
        .filter(|v| v.as_bool() == Some(true))
        .map(|v| v.name)
        .collect();
    match arch {
        Architecture::X86_64 => {
            let mut names: Vec<&str> = (X86_FEATURES.iter())
                .filter(|f| on.contains(&f.flag))
                .map(|f| f.name)
                .collect();
            if names.contains(&"avx2") {
                names.push(F16C.name);
            }
            names
        }
        Architecture::Aarch64(_) => ARM_FEATURES.iter().filter(|f| on.contains(&f.1)).map(|f| f.0).collect(),
        _ => Vec::new(),
    }
}

/// Whether `triple` can check `features` at run time (the check needs CPUID's calling
/// conventions on x86-64, `getauxval` on AArch64 Linux).
pub fn checkable(triple: &Triple, features: &[&str]) -> Result<(), String> {
    match triple.architecture {
        _ if features.is_empty() => Ok(()),
        Architecture::X86_64 => Ok(()),
        Architecture::Aarch64(_) if triple.operating_system == OperatingSystem::Linux => Ok(()),
        a => Err(format!(
            "{a} objects for {} cannot check CPU features at run time; build without --target-cpu",
            triple.operating_system
        )),
    }
}

/// Defines `<prefix>_cpu_ok() -> i32` (1: every feature in `features` is there, -1: one is
/// missing), cached after its first call; `None` when there is nothing to check.
pub fn define_check(
    module: &mut ObjectModule,
    fctx: &mut FunctionBuilderContext,
    prefix: &str,
    features: &[&str],
) -> Result<Option<FuncId>, String> {
    if features.is_empty() {
        return Ok(None);
    }
    let isa = module.isa();
    let triple = isa.triple().clone();
    let call_conv = isa.default_call_conv();
    let ptr = isa.pointer_type();
    let err = |e: cranelift_module::ModuleError| e.to_string();
    let state = module
        .declare_data(&format!("{prefix}_cpu_state"), Linkage::Local, true, false)
        .map_err(err)?;
    let mut d = DataDescription::new();
    d.define_zeroinit(4);
    d.set_align(4);
    module.define_data(state, &d).map_err(err)?;

    let mut sig = Signature::new(call_conv);
    sig.returns.push(AbiParam::new(I32));
    let id = module
        .declare_function(&format!("{prefix}_cpu_ok"), Linkage::Local, &sig)
        .map_err(err)?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let entry = b.create_block();
        let compute = b.create_block();
        let done = b.create_block();
        b.append_block_param(done, I32);
        b.switch_to_block(entry);
        let gv = module.declare_data_in_func(state, b.func);
        let at = b.ins().symbol_value(ptr, gv);
        let s = b.ins().atomic_load(I32, MemFlagsData::trusted(), at);
        b.ins().brif(s, done, &[s.into()], compute, &[]);
        b.switch_to_block(compute);
        let ok = match triple.architecture {
            Architecture::X86_64 => x86_check(module, &mut b, prefix, call_conv, features)?,
            _ => arm_check(module, &mut b, call_conv, features)?,
        };
        let one = b.ins().iconst(I32, 1);
        let bad = b.ins().iconst(I32, -1);
        let r = b.ins().select(ok, one, bad);
        b.ins().atomic_store(MemFlagsData::trusted(), r, at);
        b.ins().jump(done, &[r.into()]);
        b.switch_to_block(done);
        let r = b.block_params(done)[0];
        b.ins().return_(&[r]);
        b.seal_all_blocks();
        b.finalize(module.isa().frontend_config());
    }
    module.define_function(id, &mut ctx).map_err(|e| format!("{e:?}"))?;
    Ok(Some(id))
}

/// Machine code of `cpuid(leaf: u32, sub: u32, out: *mut [u32; 4])` and `xgetbv(xcr: u32)
/// -> u64` for the target's calling convention.
fn x86_helpers(cc: CallConv) -> (Vec<u8>, Vec<u8>) {
    let windows = cc == CallConv::WindowsFastcall;
    let store = [
        0x41, 0x89, 0x00, 0x41, 0x89, 0x58, 0x04, 0x41, 0x89, 0x48, 0x08, 0x41, 0x89, 0x50, 0x0c,
    ];
    let mut cpuid = vec![0x53]; // push rbx (CPUID writes it; callee-saved)
    if windows {
        cpuid.extend([0x89, 0xc8, 0x89, 0xd1]); // mov eax, ecx; mov ecx, edx (out stays in r8)
    } else {
        cpuid.extend([0x89, 0xf8, 0x89, 0xf1, 0x49, 0x89, 0xd0]); // mov eax, edi; mov ecx, esi; mov r8, rdx
    }
    cpuid.extend([0x0f, 0xa2]); // cpuid
    cpuid.extend(store); // mov [r8], eax; [r8+4], ebx; [r8+8], ecx; [r8+12], edx
    cpuid.extend([0x5b, 0xc3]); // pop rbx; ret
    let mut xgetbv = Vec::new();
    if !windows {
        xgetbv.extend([0x89, 0xf9]); // mov ecx, edi
    }
    xgetbv.extend([0x0f, 0x01, 0xd0, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0xc3]); // xgetbv; shl rdx, 32; or rax, rdx; ret
    (cpuid, xgetbv)
}

/// The x86-64 test: every feature's CPUID bit, the leaf within the CPU's range, and the OS
/// saving the vector state the features need (XCR0, read only when OSXSAVE says it exists).
fn x86_check(
    module: &mut ObjectModule,
    b: &mut FunctionBuilder,
    prefix: &str,
    cc: CallConv,
    features: &[&str],
) -> Result<cranelift_codegen::ir::Value, String> {
    let ptr = module.isa().pointer_type();
    let err = |e: cranelift_module::ModuleError| e.to_string();
    let (cpuid_code, xgetbv_code) = x86_helpers(cc);
    let mut sig = Signature::new(cc);
    sig.params
        .extend([AbiParam::new(I32), AbiParam::new(I32), AbiParam::new(ptr)]);
    let cpuid = module
        .declare_function(&format!("{prefix}_cpuid"), Linkage::Local, &sig)
        .map_err(err)?;
    module.define_function_bytes(cpuid, 16, &cpuid_code, &[]).map_err(err)?;
    let mut sig = Signature::new(cc);
    sig.params.push(AbiParam::new(I32));
    sig.returns.push(AbiParam::new(I64));
    let xgetbv = module
        .declare_function(&format!("{prefix}_xgetbv"), Linkage::Local, &sig)
        .map_err(err)?;
    module
        .define_function_bytes(xgetbv, 16, &xgetbv_code, &[])
        .map_err(err)?;
    let cpuid = module.declare_func_in_func(cpuid, b.func);
    let xgetbv = module.declare_func_in_func(xgetbv, b.func);
    let slot = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 2));
    let buf = b.ins().stack_addr(ptr, slot, 0);
    let read = |b: &mut FunctionBuilder, leaf: u32, sub: u32, reg: u8| {
        let (l, s) = (b.ins().iconst(I32, leaf as i64), b.ins().iconst(I32, sub as i64));
        b.ins().call(cpuid, &[l, s, buf]);
        b.ins().load(I32, MemFlagsData::trusted(), buf, reg as i32 * 4)
    };
    let max_basic = read(b, 0, 0, 0);
    let max_ext = read(b, 0x8000_0000, 0, 0);
    let mut ok = b.ins().iconst(I8, 1);
    let mut xcr0 = 0u64;
    for f in X86_FEATURES
        .iter()
        .chain([&F16C])
        .filter(|f| features.contains(&f.name))
    {
        let (max, leaf) = if f.leaf >= 0x8000_0000 {
            (max_ext, f.leaf as i64)
        } else {
            (max_basic, f.leaf as i64)
        };
        let in_range = b.ins().icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, max, leaf);
        let r = read(b, f.leaf, f.sub, f.reg);
        let bit = b.ins().band_imm_u(r, 1i64 << f.bit);
        let has = b.ins().icmp_imm_u(IntCC::NotEqual, bit, 0);
        let has = b.ins().band(has, in_range);
        ok = b.ins().band(ok, has);
        xcr0 |= f.xcr0;
    }
    if xcr0 == 0 {
        return Ok(ok);
    }
    // XGETBV faults unless CPUID.1:ECX.OSXSAVE[27] is set.
    let r = read(b, 1, 0, 2);
    let osxsave = b.ins().band_imm_u(r, 1 << 27);
    let xg = b.create_block();
    let join = b.create_block();
    b.append_block_param(join, I8);
    let zero = b.ins().iconst(I8, 0);
    b.ins().brif(osxsave, xg, &[], join, &[zero.into()]);
    b.switch_to_block(xg);
    let zero32 = b.ins().iconst(I32, 0);
    let call = b.ins().call(xgetbv, &[zero32]);
    let v = b.inst_results(call)[0];
    let masked = b.ins().band_imm_u(v, xcr0 as i64);
    let saved = b.ins().icmp_imm_u(IntCC::Equal, masked, xcr0 as i64);
    b.ins().jump(join, &[saved.into()]);
    b.switch_to_block(join);
    let saved = b.block_params(join)[0];
    Ok(b.ins().band(ok, saved))
}

/// The AArch64 Linux test: each feature's bit in `getauxval(AT_HWCAP)` or `AT_HWCAP2`.
fn arm_check(
    module: &mut ObjectModule,
    b: &mut FunctionBuilder,
    cc: CallConv,
    features: &[&str],
) -> Result<cranelift_codegen::ir::Value, String> {
    let mut sig = Signature::new(cc);
    sig.params.push(AbiParam::new(I64));
    sig.returns.push(AbiParam::new(I64));
    let getauxval = module
        .declare_function("getauxval", Linkage::Import, &sig)
        .map_err(|e| e.to_string())?;
    let getauxval = module.declare_func_in_func(getauxval, b.func);
    let mut ok = b.ins().iconst(I8, 1);
    for &(_, _, word, bit) in ARM_FEATURES.iter().filter(|f| features.contains(&f.0)) {
        let w = b.ins().iconst(I64, word as i64);
        let call = b.ins().call(getauxval, &[w]);
        let v = b.inst_results(call)[0];
        let m = b.ins().band_imm_u(v, 1i64 << bit);
        let has = b.ins().icmp_imm_u(IntCC::NotEqual, m, 0);
        ok = b.ins().band(ok, has);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_features_resolve_to_cranelift_flags() {
        let t: Triple = "x86_64-unknown-linux-gnu".parse().unwrap();
        for spec in ["x86-64-v3", "x86-64-v4,+avx512vnni", "+avx2,+fma", "x86-64-v3,-fma"] {
            let mut b = isa::lookup(t.clone()).unwrap();
            apply(&mut b, &t, spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let isa = b
                .finish(cranelift_codegen::settings::Flags::new(
                    cranelift_codegen::settings::builder(),
                ))
                .unwrap();
            let got = assumed(&*isa);
            assert!(got.contains(&"avx2") && got.contains(&"f16c"), "{spec}: {got:?}");
            assert_eq!(got.contains(&"fma"), !spec.contains("-fma"), "{spec}: {got:?}");
            assert_eq!(got.contains(&"avx512vnni"), spec.contains("vnni"), "{spec}: {got:?}");
        }
        let mut b = isa::lookup(t.clone()).unwrap();
        let e = apply(&mut b, &t, "+avx9").unwrap_err();
        assert!(e.contains("unknown") && e.contains("avx512vnni"), "{e}");
        let a: Triple = "aarch64-unknown-linux-gnu".parse().unwrap();
        let mut b = isa::lookup(a.clone()).unwrap();
        assert!(apply(&mut b, &a, "x86-64-v3").unwrap_err().contains("x86-64 level"));
        apply(&mut b, &a, "+dotprod").unwrap();
    }

    #[test]
    fn helper_machine_code_is_the_expected_length() {
        let (c, x) = x86_helpers(CallConv::SystemV);
        assert_eq!((c.len(), x.len()), (27, 13));
        assert_eq!((c[0], *c.last().unwrap(), *x.last().unwrap()), (0x53, 0xc3, 0xc3));
    }
}
