//! The op registry: one entry per ONNX op type Kiln imports, naming the importer function
//! and what it supports. `SUPPORTED_OPS.md` is generated from this table, so the docs
//! cannot drift from the code. Importers live one file per op family.

mod binary;
mod combine;
mod constant;
mod conv;
mod elementwise;
mod index;
mod matmul;
mod matmul_nbits;
mod norm;
mod pool;
mod quant;
mod reduce;
mod resize;
mod rnn;
mod shape;

use super::{Ctx, ImportError};
use crate::onnx::proto::NodeProto;
use kiln_ir::ValueId;

pub type ImportFn = fn(&mut Ctx, &NodeProto) -> Result<Vec<ValueId>, ImportError>;

/// One importable ONNX op.
pub struct OpSpec {
    pub op_type: &'static str,
    /// The op's domain: empty for the default (ai.onnx), else e.g. `com.microsoft`.
    pub domain: &'static str,
    /// Lowest opset of the default domain whose form of the op is handled.
    pub since: i64,
    pub import: ImportFn,
    /// Attribute support and limits, for `SUPPORTED_OPS.md`.
    pub notes: &'static str,
}

const fn op(op_type: &'static str, import: ImportFn, notes: &'static str) -> OpSpec {
    OpSpec {
        op_type,
        domain: "",
        since: 7,
        import,
        notes,
    }
}

/// An op of ONNX Runtime's `com.microsoft` domain.
const fn ms(op_type: &'static str, import: ImportFn, notes: &'static str) -> OpSpec {
    OpSpec {
        op_type,
        domain: MS,
        since: 1,
        import,
        notes,
    }
}

const MS: &str = "com.microsoft";

pub static REGISTRY: &[OpSpec] = &[
    // Elementwise, one input.
    op("Abs", elementwise::unary, ""),
    op("Acos", elementwise::unary, ""),
    op("Acosh", elementwise::unary, ""),
    op("Asin", elementwise::unary, ""),
    op("Asinh", elementwise::unary, ""),
    op("Atan", elementwise::unary, ""),
    op("Atanh", elementwise::unary, ""),
    op("BitwiseNot", elementwise::unary, ""),
    op("Ceil", elementwise::unary, ""),
    op("Celu", elementwise::unary, "alpha"),
    op(
        "Clip",
        elementwise::clip,
        "min/max as attributes (opset < 11) or constant inputs; integer types lower to Max/Min",
    ),
    op("Cos", elementwise::unary, ""),
    op("Cosh", elementwise::unary, ""),
    op("Elu", elementwise::unary, "alpha"),
    op("Erf", elementwise::unary, ""),
    op("Exp", elementwise::unary, ""),
    op("Floor", elementwise::unary, ""),
    op("Gelu", elementwise::unary, "approximate none|tanh"),
    op("HardSigmoid", elementwise::unary, "alpha, beta"),
    op("HardSwish", elementwise::unary, ""),
    op("IsInf", elementwise::unary, "detect_positive, detect_negative"),
    op("IsNaN", elementwise::unary, ""),
    op("LeakyRelu", elementwise::unary, "alpha"),
    op("Log", elementwise::unary, ""),
    op("Mish", elementwise::unary, ""),
    op("Neg", elementwise::unary, ""),
    op("Not", elementwise::unary, ""),
    op("Reciprocal", elementwise::unary, ""),
    op("Relu", elementwise::unary, ""),
    op("Round", elementwise::unary, "half to even"),
    op("Selu", elementwise::unary, "alpha, gamma"),
    op("Sigmoid", elementwise::unary, ""),
    op("Sign", elementwise::unary, ""),
    op("Sin", elementwise::unary, ""),
    op("Sinh", elementwise::unary, ""),
    op("Softplus", elementwise::unary, ""),
    op("Softsign", elementwise::unary, ""),
    op("Sqrt", elementwise::unary, ""),
    op("Tan", elementwise::unary, ""),
    op("Tanh", elementwise::unary, ""),
    op("ThresholdedRelu", elementwise::unary, "alpha"),
    // Elementwise, several inputs.
    op("Add", binary::binary, "numpy broadcasting"),
    op("And", binary::binary, ""),
    op("BitShift", binary::binary, "direction"),
    op("BitwiseAnd", binary::binary, ""),
    op("BitwiseOr", binary::binary, ""),
    op("BitwiseXor", binary::binary, ""),
    op("Div", binary::binary, "integer division truncates"),
    op("Equal", binary::binary, ""),
    op("Greater", binary::binary, ""),
    op("GreaterOrEqual", binary::binary, ""),
    op("Less", binary::binary, ""),
    op("LessOrEqual", binary::binary, ""),
    op("Max", binary::variadic, "any number of inputs"),
    op("Mean", binary::variadic, "any number of inputs"),
    op("Min", binary::variadic, "any number of inputs"),
    op("Mod", binary::binary, "fmod"),
    op("Mul", binary::binary, ""),
    op("Or", binary::binary, ""),
    op(
        "Pow",
        binary::binary,
        "exponent of another numeric type is cast to the base type",
    ),
    op("PRelu", binary::binary, "slope broadcasts to X"),
    op("Sub", binary::binary, ""),
    op("Sum", binary::variadic, "any number of inputs"),
    op("Where", binary::where_, ""),
    op("Xor", binary::binary, ""),
    // Linear algebra and windows.
    op(
        "Conv",
        conv::conv,
        "1-D/2-D/3-D, group (depthwise), pads, strides, dilations, auto_pad",
    ),
    op(
        "ConvTranspose",
        conv::conv_transpose,
        "group, pads, strides, dilations, output_padding, output_shape, auto_pad",
    ),
    op("Einsum", matmul::einsum, "explicit and implicit output, no ellipsis"),
    op("Gemm", matmul::gemm, "alpha, beta, transA, transB, optional C"),
    op("MatMul", matmul::matmul, "batched, 1-D operands"),
    op(
        "AveragePool",
        pool::pool,
        "pads, strides, dilations, ceil_mode, count_include_pad, auto_pad",
    ),
    op("GlobalAveragePool", pool::global, ""),
    op("GlobalLpPool", pool::global, "p"),
    op("GlobalMaxPool", pool::global, ""),
    op("LpPool", pool::pool, "p, pads, strides, dilations, ceil_mode, auto_pad"),
    op(
        "MaxPool",
        pool::pool,
        "pads, strides, dilations, ceil_mode, auto_pad; no Indices output",
    ),
    // Normalization and softmax.
    op(
        "BatchNormalization",
        norm::batch_norm,
        "inference mode only (training_mode = 0)",
    ),
    op("Hardmax", norm::softmax, "axis; opset < 13 flattens at axis"),
    op("InstanceNormalization", norm::instance_norm, "epsilon"),
    op(
        "LayerNormalization",
        norm::layer_norm,
        "axis, epsilon, Mean and InvStdDev outputs",
    ),
    op("LogSoftmax", norm::softmax, "axis; opset < 13 flattens at axis"),
    op("LRN", norm::lrn, "size, alpha, beta, bias"),
    op("Softmax", norm::softmax, "axis; opset < 13 flattens at axis"),
    // Shape and layout.
    op("Concat", combine::concat, "axis"),
    op(
        "DepthToSpace",
        shape::depth_to_space,
        "DCR and CRD, lowered to Reshape/Transpose",
    ),
    op(
        "Dropout",
        shape::identity,
        "inference: identity; the mask output is all true",
    ),
    op("Expand", shape::expand, "constant shape"),
    op("Flatten", shape::flatten, "axis"),
    op("Identity", shape::identity, ""),
    op(
        "Pad",
        combine::pad,
        "constant/reflect/edge/wrap, constant pads (attribute or input), axes",
    ),
    op("Reshape", shape::reshape, "constant shape, 0 and -1, allowzero"),
    op("Shape", shape::shape, "start, end (static: becomes a constant)"),
    op("Size", shape::size, "static: becomes a constant"),
    op(
        "Slice",
        combine::slice,
        "constant starts/ends/axes/steps (attributes or inputs), negative steps",
    ),
    op("SpaceToDepth", shape::space_to_depth, "lowered to Reshape/Transpose"),
    op(
        "Split",
        combine::split,
        "split sizes (attribute or input), num_outputs, equal split",
    ),
    op("Squeeze", shape::squeeze, "axes as attribute or constant input"),
    op("Tile", shape::tile, "constant repeats"),
    op("Transpose", shape::transpose, "perm (default reverses)"),
    op("Unsqueeze", shape::unsqueeze, "axes as attribute or constant input"),
    // Indexing.
    op("ArgMax", index::arg, "axis, keepdims, select_last_index"),
    op("ArgMin", index::arg, "axis, keepdims, select_last_index"),
    op("CumSum", index::cumsum, "constant axis, exclusive, reverse"),
    op("Gather", index::gather, "axis, negative indices"),
    op("GatherElements", index::gather_elements, "axis"),
    op("GatherND", index::gather_nd, "batch_dims"),
    op("OneHot", index::one_hot, "constant depth, axis"),
    op(
        "Scatter",
        index::scatter_elements,
        "axis (deprecated alias of ScatterElements)",
    ),
    op(
        "ScatterElements",
        index::scatter_elements,
        "axis, reduction none/add/mul/max/min",
    ),
    op("ScatterND", index::scatter_nd, "reduction none/add/mul/max/min"),
    op("TopK", index::topk, "constant K, axis, largest; always sorted"),
    op("Trilu", index::trilu, "upper, constant k"),
    // Reductions.
    op(
        "ReduceL1",
        reduce::reduce,
        "axes (attribute or constant input), keepdims, noop_with_empty_axes",
    ),
    op("ReduceL2", reduce::reduce, "as ReduceL1"),
    op("ReduceLogSum", reduce::reduce, "as ReduceL1"),
    op("ReduceLogSumExp", reduce::reduce, "as ReduceL1"),
    op("ReduceMax", reduce::reduce, "as ReduceL1"),
    op("ReduceMean", reduce::reduce, "as ReduceL1"),
    op("ReduceMin", reduce::reduce, "as ReduceL1"),
    op("ReduceProd", reduce::reduce, "as ReduceL1"),
    op("ReduceSum", reduce::reduce, "as ReduceL1"),
    op("ReduceSumSquare", reduce::reduce, "as ReduceL1"),
    // Quantization (QDQ and the QOperator ops of the default domain).
    op(
        "ConvInteger",
        quant::conv_integer,
        "as Conv; 8-bit operands, per-tensor input zero point, per-channel weight zero points",
    ),
    op(
        "DynamicQuantizeLinear",
        quant::dynamic_quantize_linear,
        "folded with the ConvInteger/MatMulInteger after it into Kiln's hybrid ops",
    ),
    op(
        "DequantizeLinear",
        quant::dequantize_linear,
        "int8/uint8/int16/uint16/int32; per tensor, per axis, blocked",
    ),
    op(
        "MatMulInteger",
        quant::matmul_integer,
        "2-D b; zero points per tensor, per row of a, per column of b",
    ),
    op(
        "QLinearConv",
        quant::qlinear_conv,
        "as Conv; per-tensor input/output, per-tensor or per-channel weight, int32 bias",
    ),
    op(
        "QLinearMatMul",
        quant::qlinear_matmul,
        "per tensor, per row of A, per column of B",
    ),
    op(
        "QuantizeLinear",
        quant::quantize_linear,
        "to int8/uint8/int16/uint16, rounding half to even; per tensor, per axis, blocked; output_dtype",
    ),
    // ONNX Runtime's quantized operators (QOperator format).
    ms(
        "QGemm",
        quant::qgemm,
        "alpha, transA, transB; int32 bias per column; float output without y_scale",
    ),
    ms("QLinearAdd", quant::qlinear_binary, "numpy broadcasting"),
    ms(
        "MatMulNBits",
        matmul_nbits::matmul_nbits,
        "bits 2/4/8, block_size, packed or float zero points, bias; g_idx only in block order; weights keep their blocked grid",
    ),
    ms(
        "QLinearAveragePool",
        quant::qlinear_pool,
        "as AveragePool; channels_last = 0",
    ),
    ms("QLinearConcat", quant::qlinear_concat, "axis"),
    ms("QLinearGlobalAveragePool", quant::qlinear_pool, "channels_last = 0"),
    ms("QLinearLeakyRelu", quant::qlinear_unary, "alpha"),
    ms("QLinearMul", quant::qlinear_binary, "numpy broadcasting"),
    ms("QLinearSigmoid", quant::qlinear_unary, ""),
    ms("QLinearSoftmax", quant::qlinear_unary, "axis, opset"),
    ms(
        "DequantizeLinear",
        quant::dequantize_linear,
        "as the default domain's (ONNX Runtime writes 16-bit ones here)",
    ),
    ms("QuantizeLinear", quant::quantize_linear, "as the default domain's"),
    // Constants and types.
    op("Cast", constant::cast, "between f32, f64, f16, i8..i64, u8..u64, bool"),
    op("CastLike", constant::cast, "as Cast"),
    op("Constant", constant::constant, "value, value_float(s), value_int(s)"),
    op("ConstantOfShape", constant::constant_of_shape, "constant shape"),
    op("Range", constant::range, "constant inputs"),
    // Recurrent and resampling.
    op(
        "GRU",
        rnn::rnn,
        "all directions, layout, clip, linear_before_reset, activations; sequence_lens must be full",
    ),
    op(
        "LSTM",
        rnn::rnn,
        "all directions, layout, clip, input_forget, peepholes, activations; sequence_lens must be full",
    ),
    op(
        "RNN",
        rnn::rnn,
        "all directions, layout, clip, activations; sequence_lens must be full",
    ),
    op(
        "Resize",
        resize::resize,
        "nearest (all nearest_modes), linear, cubic; every coordinate mode; scales or sizes, axes, keep_aspect_ratio_policy; no antialias",
    ),
    op("Upsample", resize::upsample, "nearest, linear (opset 7-9)"),
];

/// The importer for `op_type` in `domain`, if Kiln has one.
pub fn find(op_type: &str, domain: &str) -> Option<&'static OpSpec> {
    let default = super::is_default_domain(domain);
    REGISTRY
        .iter()
        .find(|s| s.op_type == op_type && (s.domain == domain || (default && s.domain.is_empty())))
}

/// `SUPPORTED_OPS.md`, generated from [`REGISTRY`].
pub fn markdown() -> String {
    let mut specs: Vec<&OpSpec> = REGISTRY.iter().collect();
    specs.sort_by_key(|s| s.op_type);
    let mut s = String::from(
        "# Supported ONNX operators\n\n\
         Generated from the op registry (`compiler/src/onnx/ops/mod.rs`) by `kiln ops --markdown`;\n\
         a test fails when this file is out of date. Domain: ai.onnx (default). Opsets 7 to 25 are\n\
         read; each op accepts every form of its attributes/inputs across those opsets unless noted.\n\
         Ops marked com.microsoft are ONNX Runtime's quantized operators (QOperator models).\n\
         Older files are read with opset-7 meanings and legacy attributes are refused; newer ones\n\
         are refused unless `--allow-newer-opset` reads them with opset-25 meanings.\n\
         Inputs named constant below must be initializers or fold to constants at import.\n\n\
         | op | opsets | notes |\n|---|---|---|\n",
    );
    for o in specs {
        let name = if o.domain.is_empty() {
            o.op_type.to_string()
        } else {
            format!("{} ({})", o.op_type, o.domain)
        };
        s.push_str(&format!("| {name} | {}+ | {} |\n", o.since, o.notes));
    }
    s.push_str(&format!("\n{} operators.\n", REGISTRY.len()));
    s
}
