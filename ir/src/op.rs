//! The closed set of operations Kiln compiles. Every attribute is typed and already resolved
//! to static values (pads are explicit, axes are non-negative, target shapes are concrete), so
//! backends never re-derive ONNX defaults. Adding an op means extending this enum; the
//! compiler then points at every `match` that must learn it.

use crate::dtype::Scalar;
pub use kiln_runtime::Requant;
use std::sync::Arc;

/// Elementwise operations with one input. Parameters travel with the variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Relu,
    LeakyRelu { alpha: f32 },
    Elu { alpha: f32 },
    Celu { alpha: f32 },
    Selu { alpha: f32, gamma: f32 },
    ThresholdedRelu { alpha: f32 },
    HardSigmoid { alpha: f32, beta: f32 },
    HardSwish,
    Sigmoid,
    Tanh,
    Softplus,
    Softsign,
    Mish,
    Gelu { tanh_approx: bool },
    Clip { min: f32, max: f32 },
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Sign,
    Reciprocal,
    Floor,
    Ceil,
    Round,
    Erf,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Not,
    IsNaN,
    IsInf { positive: bool, negative: bool },
    BitwiseNot,
}

/// Elementwise operations with two inputs and numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Integer modulo with the sign of the divisor (`fmod = false`) or C `fmod`.
    Mod {
        fmod: bool,
    },
    /// `x < 0 ? slope * x : x` with broadcasting slope.
    PRelu,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    BitShiftLeft,
    BitShiftRight,
}

impl BinaryOp {
    /// Comparisons and logic produce `bool` whatever the input type.
    pub fn yields_bool(self) -> bool {
        use BinaryOp::*;
        matches!(
            self,
            Equal | Less | LessOrEqual | Greater | GreaterOrEqual | And | Or | Xor
        )
    }
}

/// Spatial window geometry shared by convolution and pooling. Pads are explicit:
/// `pads[i]` is the start pad of spatial axis `i`, `pads[rank + i]` the end pad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
}

/// The 2-D view of a window every backend's kernels loop over (defined in the runtime,
/// whose Rust-source kernels take it too).
pub use kiln_runtime::kernels::Plane;

impl Window {
    /// The plane of this window over an `[N, C, (H,) W]` input giving `output`.
    pub fn plane(&self, input: &[usize], output: &[usize]) -> Plane {
        if input.len() == 3 {
            Plane {
                h: 1,
                w: input[2],
                oh: 1,
                ow: output[2],
                kh: 1,
                kw: self.kernel[0],
                sh: 1,
                sw: self.strides[0],
                dh: 1,
                dw: self.dilations[0],
                ph: 0,
                pw: self.pads[0],
            }
        } else {
            Plane {
                h: input[2],
                w: input[3],
                oh: output[2],
                ow: output[3],
                kh: self.kernel[0],
                kw: self.kernel[1],
                sh: self.strides[0],
                sw: self.strides[1],
                dh: self.dilations[0],
                dw: self.dilations[1],
                ph: self.pads[0],
                pw: self.pads[1],
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub window: Window,
    pub group: usize,
    /// An elementwise activation applied to each result (set by `fuse_activations`).
    pub fused: Option<UnaryOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvTranspose {
    pub window: Window,
    pub group: usize,
    pub output_padding: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg {
        count_include_pad: bool,
    },
    /// Lp pooling with integer p.
    Lp {
        p: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub kind: PoolKind,
    pub window: Window,
    pub ceil_mode: bool,
    /// The rounding of an integer average (float pools ignore it).
    pub numerics: Numerics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

/// How a scatter combines an update with the value already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Per-axis slice, resolved against the static input shape: output index `j` on this axis
/// reads input index `start + j * step`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceAxis {
    pub start: i64,
    pub step: i64,
    pub len: usize,
}

impl SliceAxis {
    /// An axis of length `dim` taken from `start` towards `end` (exclusive) by `step` (not
    /// 0), both already moved into `0..dim` where they counted from the end, and clamped as
    /// numpy clamps them (ONNX Slice, TFLite STRIDED_SLICE).
    pub fn clamped(dim: i64, start: i64, end: i64, step: i64) -> SliceAxis {
        let (s, e) = if step > 0 {
            (start.clamp(0, dim), end.clamp(0, dim))
        } else {
            (start.clamp(0, dim - 1), end.clamp(-1, dim - 1))
        };
        let (span, stride) = if step > 0 {
            ((e - s).max(0), step)
        } else {
            ((s - e).max(0), -step)
        };
        let len = (span + stride - 1) / stride;
        SliceAxis {
            start: if len == 0 { 0 } else { s },
            step,
            len: len as usize,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnKind {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm { input_forget: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnDirection {
    Forward,
    Reverse,
    Bidirectional,
}

impl RnnDirection {
    pub fn count(self) -> usize {
        if self == RnnDirection::Bidirectional { 2 } else { 1 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Sigmoid,
    Tanh,
    Relu,
    LeakyRelu(f32),
    HardSigmoid(f32, f32),
    Affine(f32, f32),
    ScaledTanh(f32, f32),
    ThresholdedRelu(f32),
    Elu(f32),
    Softsign,
    Softplus,
}

impl Activation {
    /// The elementwise op computing this activation, where there is one (`Affine` and
    /// `ScaledTanh` have two parameters no unary op takes).
    pub fn unary(self) -> Option<UnaryOp> {
        Some(match self {
            Activation::Sigmoid => UnaryOp::Sigmoid,
            Activation::Tanh => UnaryOp::Tanh,
            Activation::Relu => UnaryOp::Relu,
            Activation::LeakyRelu(alpha) => UnaryOp::LeakyRelu { alpha },
            Activation::HardSigmoid(alpha, beta) => UnaryOp::HardSigmoid { alpha, beta },
            Activation::ThresholdedRelu(alpha) => UnaryOp::ThresholdedRelu { alpha },
            Activation::Elu(alpha) => UnaryOp::Elu { alpha },
            Activation::Softsign => UnaryOp::Softsign,
            Activation::Softplus => UnaryOp::Softplus,
            Activation::Affine(..) | Activation::ScaledTanh(..) => return None,
        })
    }
}

/// ONNX RNN/GRU/LSTM. Inputs are always `[X, W, R, B, initial_h]`, for LSTM then
/// `initial_c` and optionally the peepholes `P`; the importer materializes missing optional
/// ones as zeros.
/// Outputs are always `[Y, Y_h]` (+ `Y_c` for LSTM).
#[derive(Clone, Debug, PartialEq)]
pub struct Rnn {
    pub kind: RnnKind,
    pub hidden: usize,
    pub direction: RnnDirection,
    /// Gate activations, per direction, in ONNX order (f, g[, h]).
    pub activations: Vec<Activation>,
    pub clip: Option<f32>,
    /// `layout = 1`: batch-major X/Y.
    pub batch_major: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Nearest(NearestMode),
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// Resize with the resolved output shape and the per-axis scale factors used for coordinates. `roi` is only read by
/// `TfCropAndResize` (start then end per axis, normalized coordinates).
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    pub sizes: Vec<usize>,
    pub mode: ResizeMode,
    pub coord: CoordMode,
    pub scales: Vec<f32>,
    pub roi: Vec<f32>,
    pub cubic_a: f32,
    pub exclude_outside: bool,
    pub extrapolation: f32,
}

/// One op of the graph. Input and output arity is documented per variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `[x] -> [y]`, copies its input (kept only until `remove_identities` runs).
    Identity,
    Unary(UnaryOp),
    /// `[a, b] -> [y]` with numpy broadcasting.
    Binary(BinaryOp),
    /// `[cond, a, b] -> [y]`.
    Where,
    /// `[x] -> [y]`; value conversion to another storage kind.
    Cast {
        to: Scalar,
    },
    /// `[x, w] | [x, w, b] -> [y]`; NC* layout, weights `[M, C/group, k...]`.
    Conv(Conv),
    /// `[x, w] | [x, w, b] -> [y]`; weights `[C, M/group, k...]`.
    ConvTranspose(ConvTranspose),
    /// `[a, b] | [a, b, c] -> [y]`: `alpha * op(a) @ op(b) + beta * c`.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
        /// An activation applied to each result (set by `fuse_activations`).
        fused: Option<UnaryOp>,
    },
    /// `[a, b] -> [y]`, numpy matmul with batch broadcasting.
    MatMul,
    /// `[x] -> [y]`, sliding window over NC* spatial axes.
    Pool(Pool),
    /// `[x] -> [y]`, reduce all spatial axes to 1.
    GlobalPool(PoolKind),
    /// `[x, scale, bias, mean, var] -> [y]`, inference form.
    BatchNorm {
        epsilon: f32,
    },
    /// `[x, scale, bias] -> [y]`.
    InstanceNorm {
        epsilon: f32,
    },
    /// `[x, scale] | [x, scale, bias] -> [y]`, normalizing axes `axis..rank`.
    LayerNorm {
        axis: usize,
        epsilon: f32,
    },
    /// `[x] -> [y]`, square-sum over a window of channels.
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
    /// `[x] -> [y]` along one axis.
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    Hardmax {
        axis: usize,
    },
    /// `[x] -> [y]`; any reshape-like (Reshape, Flatten, Squeeze, Unsqueeze) with the result shape.
    Reshape {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// `[x...] -> [y]`.
    Concat {
        axis: usize,
    },
    /// `[x] -> [y...]`, one output per entry of `sizes`.
    Split {
        axis: usize,
        sizes: Vec<usize>,
    },
    /// `[x] -> [y]`, one entry per input axis.
    Slice {
        axes: Vec<SliceAxis>,
    },
    /// `[x] | [x, value] -> [y]`; `pads` as in ONNX (all starts, then all ends), may be negative.
    Pad {
        mode: PadMode,
        pads: Vec<i64>,
    },
    /// `[x, indices] -> [y]`.
    Gather {
        axis: usize,
    },
    GatherElements {
        axis: usize,
    },
    /// `[data, indices] -> [y]`.
    GatherNd {
        batch_dims: usize,
    },
    /// `[data, indices, updates] -> [y]`.
    ScatterElements {
        axis: usize,
        reduction: ScatterReduction,
    },
    ScatterNd {
        reduction: ScatterReduction,
    },
    /// `[x] -> [y]`, broadcast to the static output shape.
    Expand {
        shape: Vec<usize>,
    },
    Tile {
        repeats: Vec<usize>,
    },
    /// `[x] -> [y]`.
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keep_dims: bool,
    },
    /// `[x] -> [y: i64]`.
    ArgMax {
        axis: usize,
        keep_dims: bool,
        last: bool,
    },
    ArgMin {
        axis: usize,
        keep_dims: bool,
        last: bool,
    },
    /// `[x] -> [y]`.
    CumSum {
        axis: usize,
        exclusive: bool,
        reverse: bool,
    },
    /// `[indices, values] -> [y]` with values `[off, on]`.
    OneHot {
        axis: usize,
        depth: usize,
    },
    /// `[x] -> [y]`, lower (`upper = false`) or upper triangle with diagonal offset `k`.
    Trilu {
        upper: bool,
        k: i64,
    },
    /// `[x...] -> [y]`, general Einstein summation (`ij,jk->ik`).
    Einsum {
        equation: String,
    },
    Rnn(Rnn),
    /// `[x] -> [y]`.
    Resize(Resize),
    /// `[x, y] -> [values, indices]`.
    TopK {
        axis: usize,
        k: usize,
        largest: bool,
        sorted: bool,
    },
    // ---- integer ops (quantized graphs; arithmetic in `kiln_runtime`) ----
    /// `[x: f32] -> [q: to<scale, zero_point>]`, rounding half to even, saturating.
    Quantize {
        to: Scalar,
        scale: f32,
        zero_point: i32,
    },
    /// `[q] -> [x: f32]`, `x = (q - zero_point) * scale`.
    Dequantize {
        scale: f32,
        zero_point: i32,
    },
    /// `[x: i8, w: i8 (symmetric, per output channel), b: i32?] -> [y: i8]`.
    QConv {
        window: Window,
        group: usize,
        q: QLinear,
    },
    /// `[x: i8 [.., K], w: i8 [K, N] (symmetric), b: i32 [N]?] -> [y: i8 [.., N]]`.
    QMatMul {
        q: QLinear,
    },
    /// `[x: i8 [.., K], w: i8 [K, N] (symmetric), b: i64 [N]?] -> [y: i8 [.., N]]`: an int8
    /// product whose weights have one scale per `block` rows of K and column (ONNX blocked
    /// quantization). `q.requant` is `[ceil(K / block), N]` row-major, and the blocks of a
    /// column share one shift; multipliers may be negative (a model's own grid keeps the
    /// sign of its scales). Each block's i32 sum times its multiplier is added in i64 to
    /// the bias (in output steps times `2^(31 - shift)`), and the total is shifted down once,
    /// rounding half up (`kiln_runtime::kernels::int::qblock_matmul`).
    QBlockMatMul {
        q: QLinear,
        block: usize,
    },
    /// `[x: f32, w: i8 (symmetric, per output channel)] -> [y: f32]`, hybrid convolution:
    /// `x` quantized at run time as one tensor (`kiln_runtime::dynamic_quantize`), the int8
    /// products summed in i32, `y = kiln_runtime::dynamic_rescale(acc, s_x, weight_scales[c])`.
    /// A bias and activation follow as float ops.
    DynConv {
        window: Window,
        group: usize,
        weight_scales: Arc<[f32]>,
    },
    /// `[x: f32 [.., K], w: i8 [K, N] (symmetric, per column)] -> [y: f32 [.., N]]`, hybrid
    /// product as `DynConv` with each row of `x` quantized on its own.
    ///
    /// With `block > 0` the weight scales are blocked along K (ONNX blocked quantization,
    /// ONNX Runtime's `MatMulNBits`): `weight_scales` is `[ceil(K / block), N]` row-major,
    /// each block's i32 sum is rescaled with its own scale and the results are added in f32,
    /// in block order from 0.0 (`kiln_runtime::kernels::dyn_matmul`). Scales may be negative
    /// (a model's own blocked grid keeps its signs). `weight_bits` is the storage width, as
    /// in `QLinear`.
    DynMatMul {
        weight_scales: Arc<[f32]>,
        block: usize,
        weight_bits: u8,
    },
    /// `[x: f32] -> [y: u8, scale: f32 [], zero_point: u8 []]`, ONNX `DynamicQuantizeLinear`:
    /// the range widened to include 0 over 255 steps, rounding half to even. Only the
    /// evaluator runs it: `quantize::qdq` folds the pattern it starts into `DynConv` /
    /// `DynMatMul`, whose rule is the same shifted to int8.
    DynamicQuantize,
    /// `[x: u8|i8, w: u8|i8, x_zp?, w_zp?] -> [y: i32]`, ONNX `ConvInteger` (evaluator only).
    IntConv {
        window: Window,
        group: usize,
    },
    /// `[a: u8|i8, b: u8|i8, a_zp?, b_zp?] -> [y: i32]`, ONNX `MatMulInteger` (evaluator only).
    IntMatMul,
    /// `[a: i8, b: i8] -> [y: i8]` with broadcasting (TFLite's int8 Add).
    QAdd(QAdd),
    /// `[a: i8, b: i8] -> [y: i8]` with broadcasting (TFLite's int8 Mul):
    /// `y = clamp(zp_out + M((a - zp_a)(b - zp_b)))`.
    QMul(QMul),
    /// `[x: i8, alpha: i8] -> [y: i8]` with `alpha` broadcast to `x` (TFLite's int8 PRelu;
    /// LeakyReLU is the case of one alpha of 1):
    /// `y = clamp(zp_out + (x >= zp_x ? M_1(x - zp_x) : M_2((x - zp_x)(alpha - zp_alpha))))`.
    QPRelu(QPRelu),
    /// `[x: i8] -> [y: i8<1/256, -128>]` softmax along `axis` (`kiln_runtime::softmax_i8`):
    /// `exp_table[d]` is `exp(-scale_in * d)` in Q16 for the distance `d` below the row max.
    QSoftmax {
        axis: usize,
        exp_table: Arc<[i32]>,
    },
    /// `[x: i8] -> [y: i8]`, `y = table[x + 128]`: any elementwise function of one int8.
    Lut {
        table: Arc<[i8]>,
        scale: f32,
        zero_point: i32,
    },
    /// `[x: i8|i16] -> [y: to<scale, zero_point>]`: an integer value moved to other
    /// parameters and width without float, `y = clamp(zero_point + M(x - input_zp))` with
    /// `kiln_runtime::multiply_by_quantized_multiplier` (where int8 and 16x8 layers meet).
    Requant {
        to: Scalar,
        input_zp: i32,
        requant: Requant,
        scale: f32,
        zero_point: i32,
    },
    /// `[x: i16<s, 0>] -> [y: i16<1/32768, 0>]`: softmax along `axis` of the int16 of a 16x8
    /// layer, the exponential of `max - x` as the product of two 256-entry Q30 tables
    /// (`kiln_runtime::softmax_i16`, `softmax16_tables`).
    QSoftmax16 {
        axis: usize,
        exp_hi: Arc<[i32]>,
        exp_lo: Arc<[i32]>,
    },
    /// `[x: i16] -> [y: i16<scale, 0>]`, a one-input function of an int16 as 513 samples
    /// with integer interpolation between them (`kiln_runtime::lut16`).
    Lut16 {
        table: Arc<[i16]>,
        scale: f32,
    },
}

/// Whose integer arithmetic an op reproduces bit for bit. The two differ in rounding only:
/// - `Onnx` (ONNX Runtime): one rescale `x * m * 2^(shift-31)` rounded half up
///   (`kiln_runtime::multiply_by_quantized_multiplier`), averages rounded half to even.
/// - `Tflite` (TFLite's reference kernels, TFLite Micro, CMSIS-NN): the rescale in two
///   steps, the doubling high multiply (rounded half up) then a divide by a power of two
///   (rounded half away from zero; `kiln_runtime::multiply_by_quantized_multiplier_tflite`);
///   averages round half away from zero. The quantizer gives it to convolutions, Add and
///   average pools; int8 fully connected layers keep `Onnx`, which is what TFLite's reference
///   fully connected kernel gives (measured on the MLPerf Tiny models' references). A 16x8
///   fully connected layer with `Tflite` saturates its i64 sum to i32 and rescales it with
///   the 32-bit single rounding (TFLite's), where 16x8 convolutions keep the 64-bit rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Numerics {
    #[default]
    Onnx,
    Tflite,
}

impl Numerics {
    pub fn name(self) -> &'static str {
        match self {
            Numerics::Onnx => "onnx",
            Numerics::Tflite => "tflite",
        }
    }
}

/// The rescale of an integer Conv or MatMul: `y = clamp(zp_out + M_c(sum_k (x - zp_in) w + b))`.
#[derive(Clone, Debug, PartialEq)]
pub struct QLinear {
    pub input_zp: i32,
    pub output_scale: f32,
    pub output_zp: i32,
    /// One per output channel, or one for all.
    pub requant: Arc<[Requant]>,
    /// Clamp of the result in output integers (a fused ReLU/Clip lands here).
    pub act_min: i32,
    pub act_max: i32,
    /// Storage width of the weight (8, 4 or 2): its values lie in the signed range of that
    /// many bits and backends store them packed, `8 / weight_bits` to a byte
    /// (`kiln_runtime::pack_weights`). Arithmetic is the same at every width.
    pub weight_bits: u8,
    /// The rounding of the rescale.
    pub numerics: Numerics,
}

impl QLinear {
    /// Largest weight value at this width (127, 7 or 1; the smallest is one below minus it).
    pub fn weight_max(&self) -> i32 {
        (1 << (self.weight_bits - 1)) - 1
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct QMul {
    pub a_zp: i32,
    pub b_zp: i32,
    pub output_scale: f32,
    pub output_zp: i32,
    pub requant: Requant,
    pub act_min: i32,
    pub act_max: i32,
    /// The rounding of the rescale.
    pub numerics: Numerics,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QPRelu {
    pub input_zp: i32,
    pub alpha_zp: i32,
    pub output_scale: f32,
    pub output_zp: i32,
    /// `s_x / s_y`, for inputs at or above the zero point.
    pub identity: Requant,
    /// `s_x s_alpha / s_y`, for the product with alpha below it.
    pub alpha: Requant,
    /// The rounding of both rescales.
    pub numerics: Numerics,
}

/// TFLite's int8 Add: both inputs shifted left by `ADD_LEFT_SHIFT`, rescaled to a common
/// scale, summed, and rescaled to the output.
#[derive(Clone, Debug, PartialEq)]
pub struct QAdd {
    pub a_zp: i32,
    pub a: Requant,
    pub b_zp: i32,
    pub b: Requant,
    pub output_scale: f32,
    pub output_zp: i32,
    pub out: Requant,
    pub act_min: i32,
    pub act_max: i32,
    /// The rounding of the three rescales.
    pub numerics: Numerics,
}

impl Op {
    /// Short stable name used in the text form, tables and diagnostics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Where => "Where",
            Op::Cast { .. } => "Cast",
            Op::Conv(_) => "Conv",
            Op::ConvTranspose(_) => "ConvTranspose",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Pool(p) => match p.kind {
                PoolKind::Max => "MaxPool",
                PoolKind::Avg { .. } => "AveragePool",
                PoolKind::Lp { .. } => "LpPool",
            },
            Op::GlobalPool(k) => match k {
                PoolKind::Max => "GlobalMaxPool",
                PoolKind::Avg { .. } => "GlobalAveragePool",
                PoolKind::Lp { .. } => "GlobalLpPool",
            },
            Op::BatchNorm { .. } => "BatchNorm",
            Op::InstanceNorm { .. } => "InstanceNorm",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Lrn { .. } => "Lrn",
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::Hardmax { .. } => "Hardmax",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Split { .. } => "Split",
            Op::Slice { .. } => "Slice",
            Op::Pad { .. } => "Pad",
            Op::Gather { .. } => "Gather",
            Op::GatherElements { .. } => "GatherElements",
            Op::GatherNd { .. } => "GatherNd",
            Op::ScatterElements { .. } => "ScatterElements",
            Op::ScatterNd { .. } => "ScatterNd",
            Op::Expand { .. } => "Expand",
            Op::Tile { .. } => "Tile",
            Op::Reduce { kind, .. } => match kind {
                ReduceKind::Sum => "ReduceSum",
                ReduceKind::Mean => "ReduceMean",
                ReduceKind::Max => "ReduceMax",
                ReduceKind::Min => "ReduceMin",
                ReduceKind::Prod => "ReduceProd",
                ReduceKind::L1 => "ReduceL1",
                ReduceKind::L2 => "ReduceL2",
                ReduceKind::LogSum => "ReduceLogSum",
                ReduceKind::LogSumExp => "ReduceLogSumExp",
                ReduceKind::SumSquare => "ReduceSumSquare",
            },
            Op::ArgMax { .. } => "ArgMax",
            Op::ArgMin { .. } => "ArgMin",
            Op::CumSum { .. } => "CumSum",
            Op::OneHot { .. } => "OneHot",
            Op::Trilu { .. } => "Trilu",
            Op::Einsum { .. } => "Einsum",
            Op::Rnn(r) => match r.kind {
                RnnKind::Rnn => "RNN",
                RnnKind::Gru { .. } => "GRU",
                RnnKind::Lstm { .. } => "LSTM",
            },
            Op::Resize(_) => "Resize",
            Op::TopK { .. } => "TopK",
            Op::Quantize { .. } => "Quantize",
            Op::Dequantize { .. } => "Dequantize",
            Op::QConv { .. } => "QConv",
            Op::QMatMul { .. } => "QMatMul",
            Op::QBlockMatMul { .. } => "QBlockMatMul",
            Op::DynConv { .. } => "DynConv",
            Op::DynMatMul { .. } => "DynMatMul",
            Op::DynamicQuantize => "DynamicQuantize",
            Op::IntConv { .. } => "IntConv",
            Op::IntMatMul => "IntMatMul",
            Op::QAdd(_) => "QAdd",
            Op::QMul(_) => "QMul",
            Op::QPRelu(_) => "QPRelu",
            Op::QSoftmax { .. } => "QSoftmax",
            Op::QSoftmax16 { .. } => "QSoftmax16",
            Op::Lut { .. } => "Lut",
            Op::Lut16 { .. } => "Lut16",
            Op::Requant { .. } => "Requant",
        }
    }

    /// Ops that are pure data movement (no arithmetic); useful for reports and fusion.
    pub fn is_layout(&self) -> bool {
        matches!(
            self,
            Op::Identity
                | Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Concat { .. }
                | Op::Split { .. }
                | Op::Slice { .. }
                | Op::Expand { .. }
                | Op::Tile { .. }
        )
    }
}

impl UnaryOp {
    pub fn name(&self) -> &'static str {
        use UnaryOp::*;
        match self {
            Relu => "Relu",
            LeakyRelu { .. } => "LeakyRelu",
            Elu { .. } => "Elu",
            Celu { .. } => "Celu",
            Selu { .. } => "Selu",
            ThresholdedRelu { .. } => "ThresholdedRelu",
            HardSigmoid { .. } => "HardSigmoid",
            HardSwish => "HardSwish",
            Sigmoid => "Sigmoid",
            Tanh => "Tanh",
            Softplus => "Softplus",
            Softsign => "Softsign",
            Mish => "Mish",
            Gelu { .. } => "Gelu",
            Clip { .. } => "Clip",
            Exp => "Exp",
            Log => "Log",
            Sqrt => "Sqrt",
            Neg => "Neg",
            Abs => "Abs",
            Sign => "Sign",
            Reciprocal => "Reciprocal",
            Floor => "Floor",
            Ceil => "Ceil",
            Round => "Round",
            Erf => "Erf",
            Sin => "Sin",
            Cos => "Cos",
            Tan => "Tan",
            Asin => "Asin",
            Acos => "Acos",
            Atan => "Atan",
            Sinh => "Sinh",
            Cosh => "Cosh",
            Asinh => "Asinh",
            Acosh => "Acosh",
            Atanh => "Atanh",
            Not => "Not",
            IsNaN => "IsNaN",
            IsInf { .. } => "IsInf",
            BitwiseNot => "BitwiseNot",
        }
    }
}

impl BinaryOp {
    pub fn name(&self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "Add",
            Sub => "Sub",
            Mul => "Mul",
            Div => "Div",
            Pow => "Pow",
            Max => "Max",
            Min => "Min",
            Mod { .. } => "Mod",
            PRelu => "PRelu",
            Equal => "Equal",
            Less => "Less",
            LessOrEqual => "LessOrEqual",
            Greater => "Greater",
            GreaterOrEqual => "GreaterOrEqual",
            And => "And",
            Or => "Or",
            Xor => "Xor",
            BitwiseAnd => "BitwiseAnd",
            BitwiseOr => "BitwiseOr",
            BitwiseXor => "BitwiseXor",
            BitShiftLeft => "BitShiftLeft",
            BitShiftRight => "BitShiftRight",
        }
    }
}
