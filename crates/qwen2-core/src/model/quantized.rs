//! Projection weights kept quantized in memory (a GGUF model's blocks as stored, or HF weights
//! quantized at load) and multiplied without dequantizing them, with qwen2-quant's kernels: the
//! activation rows are quantized to 8 bits per block, as llama.cpp's `vec_dot` does.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use burn::prelude::{Backend, Tensor};
use burn::tensor::{FloatDType, TensorData};
use qwen2_gguf::GgmlType;
use qwen2_quant::QuantMatrix;

use crate::error::{Error, Result};
use crate::weights::Checkpoint;

/// How the projection weights (q/k/v/o, gate/up/down and the output head) are held in memory.
/// Embeddings, norms and biases always load in the plan's weight dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightQuantization {
    /// Every tensor dequantized or converted to the plan's weight dtype.
    #[default]
    Dense,
    /// A GGUF model's quantized projections stay in the type they are stored in (F32, F16 and
    /// BF16 tensors load dense); a safetensors checkpoint loads dense.
    Stored,
    /// Every projection quantized at load (see [`QuantTarget`]).
    To(QuantTarget),
}

/// A type `--quantize` quantizes projections to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantTarget {
    /// 8-bit blocks of 32 (one f16 scale each).
    Q8_0,
    /// 4-bit blocks of 32 (one f16 scale each).
    Q4_0,
    /// 4-bit super-blocks of 256 with 6-bit sub-block scales and minimums.
    Q4K,
    /// 6-bit super-blocks of 256 with 8-bit sub-block scales.
    Q6K,
}

impl QuantTarget {
    /// Every target, in CLI order.
    pub const ALL: [QuantTarget; 4] = [Self::Q8_0, Self::Q4_0, Self::Q4K, Self::Q6K];

    /// The `--quantize` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
            Self::Q6K => "q6_k",
        }
    }

    /// The ggml type.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4K => GgmlType::Q4_K,
            Self::Q6K => GgmlType::Q6_K,
        }
    }

    /// The type a `[rows, cols]` projection gets, as llama.cpp's quantizer picks it: the output
    /// head is Q6_K unless the target is Q8_0; when `cols` is not a whole number of the type's
    /// blocks, Q4_K falls back to Q5_0, Q6_K to Q8_0, and anything else to `None` (keep the
    /// matrix dense, where llama.cpp writes F16).
    pub fn type_for(self, cols: usize, output_head: bool) -> Option<GgmlType> {
        let wanted = if output_head && self != Self::Q8_0 {
            GgmlType::Q6_K
        } else {
            self.ggml_type()
        };
        let fits = |t: GgmlType| cols.is_multiple_of(t.block_size());
        if fits(wanted) {
            return Some(wanted);
        }
        let fallback = match wanted {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q6_K => GgmlType::Q8_0,
            _ => return None,
        };
        fits(fallback).then_some(fallback)
    }
}

impl fmt::Display for QuantTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantTarget {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown quantization `{s}`: expected q8_0, q4_0, q4_k or q6_k"))
    }
}

/// A projection's weight.
#[derive(Clone)]
pub enum ProjectionWeight<B: Backend> {
    /// `[out, in]` (HF's layout) in the plan's weight dtype.
    Dense(Tensor<B, 2>),
    /// `out` rows of `in` values in ggml blocks (GGUF's layout of an `[out, in]` matrix).
    Quantized(Arc<QuantMatrix>),
}

impl<B: Backend> ProjectionWeight<B> {
    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Quantized(q) => [q.rows(), q.cols()],
        }
    }

    /// The dense tensor, `[out, in]`; `None` when quantized.
    pub fn dense(&self) -> Option<&Tensor<B, 2>> {
        match self {
            Self::Dense(w) => Some(w),
            Self::Quantized(_) => None,
        }
    }

    /// The quantized matrix; `None` when dense.
    pub fn quantized(&self) -> Option<&Arc<QuantMatrix>> {
        match self {
            Self::Dense(_) => None,
            Self::Quantized(q) => Some(q),
        }
    }

    /// Loads HF tensor `name` (`[out, in]`) as `quant` says: a GGUF's stored blocks, blocks
    /// quantized here, or dense in `dtype`. `output_head`: the matrix is the output head
    /// (llama.cpp gives it more bits).
    pub fn load(
        ckpt: &Checkpoint,
        name: &str,
        [out, inp]: [usize; 2],
        dtype: FloatDType,
        quant: WeightQuantization,
        output_head: bool,
        device: &B::Device,
    ) -> Result<Self> {
        let dense = |ckpt: &Checkpoint| -> Result<Self> {
            let w = ckpt.load(name, &[out, inp], dtype, false)?;
            Ok(Self::Dense(Tensor::from_data(w, (device, dtype.into()))))
        };
        let matrix = |ty: GgmlType, bytes: qwen2_quant::WeightBytes| -> Result<Self> {
            let q = QuantMatrix::new(ty, out, inp, bytes).map_err(|e| {
                Error::Invalid(format!("{name} ({} as {ty}): {e}", ckpt.description()))
            })?;
            Ok(Self::Quantized(Arc::new(q)))
        };
        match quant {
            WeightQuantization::Dense => dense(ckpt),
            WeightQuantization::Stored => match ckpt.quantized(name, &[out, inp])? {
                Some((ty, bytes)) => matrix(ty, bytes),
                None => dense(ckpt),
            },
            WeightQuantization::To(target) => {
                let Some(ty) = target.type_for(inp, output_head) else {
                    tracing::info!(tensor = name, cols = inp, %target,
                        "rows are not whole blocks of the quantized type: kept dense");
                    return dense(ckpt);
                };
                // A block of rows at a time: no f32 copy of the whole matrix.
                let reader = ckpt.row_reader(name, [out, inp])?;
                let arena = ckpt.quantize_arena();
                let q = QuantMatrix::from_row_blocks_in(arena, ty, out, inp, |rows, values| {
                    reader.read(rows, values)
                })
                .map_err(|e| Error::Invalid(format!("quantizing {name} to {ty}: {e}")))?;
                Ok(Self::Quantized(Arc::new(q)))
            }
        }
    }
}

/// `x` `[m, in]` × the quantized `weight`ᵀ → `[m, out]` in `compute`, on the host: `x` is read
/// back as f32, quantized per block to 8 bits and multiplied by qwen2-quant's kernels for this
/// CPU. Any backend can run it; the CPU backend's [`super::MatmulKernel::matmul_quantized`]
/// avoids the copies.
pub fn host_quantized_product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &QuantMatrix,
    compute: FloatDType,
) -> Tensor<B, 2> {
    let [m, k] = x.dims();
    assert_eq!(k, weight.cols(), "activation width matches the weight");
    let xs = x
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .expect("a tensor cast to f32 holds f32 data");
    let y = quantized_rows(&xs, m, weight);
    Tensor::<B, 2>::from_data(
        TensorData::new(y, [m, weight.rows()]),
        (&x.device(), FloatDType::F32.into()),
    )
    .cast(compute)
}

/// Rows `ids` of a quantized `[vocab, hidden]` matrix, dequantized → `ids.len() × hidden` f32
/// values (`ids` are checked against the vocabulary before the graph runs).
pub fn dequantize_rows(q: &QuantMatrix, ids: &[u32]) -> Vec<f32> {
    let row_bytes = q.row_bytes();
    let mut out = Vec::with_capacity(ids.len() * q.cols());
    for &id in ids {
        let row = &q.data()[id as usize * row_bytes..][..row_bytes];
        out.extend(
            qwen2_gguf::dequantize(q.ggml_type(), row).expect("a row is whole blocks of its type"),
        );
    }
    out
}

/// `xs` (`m` rows of `weight.cols()` f32 values) × `weight`ᵀ → `m × weight.rows()` f32 values.
pub fn quantized_rows(xs: &[f32], m: usize, weight: &QuantMatrix) -> Vec<f32> {
    let mut y = vec![0.0f32; m * weight.rows()];
    let done = if m == 1 {
        weight.matvec(xs, &mut y)
    } else {
        weight.matmul(xs, m, &mut y)
    };
    done.expect("the graph hands a projection rows of its input width");
    y
}

/// Counts of projection matrices per storage: `"q4_k"`, `"q6_k"`, ... for quantized ones and
/// the dtype's name for dense ones, in a stable order (most matrices first).
pub fn storage_summary<'a, B: Backend + 'a>(
    weights: impl IntoIterator<Item = &'a ProjectionWeight<B>>,
) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for w in weights {
        let name = match w {
            ProjectionWeight::Dense(t) => format!("{:?}", t.dtype()).to_ascii_lowercase(),
            ProjectionWeight::Quantized(q) => q.ggml_type().name().to_ascii_lowercase(),
        };
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
}

impl<B: Backend> super::Qwen2Model<B> {
    /// Every projection's weight: q/k/v/o and gate/up/down of each layer, then the head.
    fn projection_weights(&self) -> Vec<ProjectionWeight<B>> {
        let mut out = Vec::new();
        for layer in &self.layers {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            for lin in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ] {
                out.push(lin.weight.clone());
            }
        }
        match (&self.lm_head, &self.tied_head_quantized) {
            (Some(head), _) => out.push(head.weight.clone()),
            (None, Some(q)) => out.push(ProjectionWeight::Quantized(q.clone())),
            (None, None) => out.push(self.embed_tokens.clone()),
        }
        out
    }

    /// Whether any projection is kept quantized (such a model runs inference; training and
    /// saving load models dense).
    pub fn is_quantized(&self) -> bool {
        self.projection_weights()
            .iter()
            .any(|w| w.quantized().is_some())
    }

    /// How the projection matrices are stored: counts per ggml type (`"q4_k"`) or dense dtype
    /// (`"bf16"`), most first; the head counts as one (the tied head as the embedding's).
    pub fn weight_storage(&self) -> Vec<(String, usize)> {
        storage_summary(&self.projection_weights())
    }

    /// Bytes of the projection matrices (the head included): what one decode step reads.
    pub fn projection_bytes(&self) -> u64 {
        self.projection_weights()
            .iter()
            .map(|w| match w {
                ProjectionWeight::Dense(t) => (t.shape().num_elements() * t.dtype().size()) as u64,
                ProjectionWeight::Quantized(q) => q.data().len() as u64,
            })
            .sum()
    }

    /// Bytes of the weights held in memory: the projections, plus the embedding when the head
    /// is not the embedding matrix itself (untied, or tied but kept quantized apart).
    pub fn stored_weight_bytes(&self) -> u64 {
        let embedding = match &self.embed_tokens {
            ProjectionWeight::Dense(t) => (t.shape().num_elements() * t.dtype().size()) as u64,
            ProjectionWeight::Quantized(q) => q.data().len() as u64,
        };
        let head_is_embedding = self.lm_head.is_none() && self.tied_head_quantized.is_none();
        self.projection_bytes() + if head_is_embedding { 0 } else { embedding }
    }

    /// [`Qwen2Model::weight_storage`] in words: `"q4_k ×120, q6_k ×49"`, or `"dense f32"`.
    pub fn weight_storage_text(&self) -> String {
        let storage = self.weight_storage();
        if !self.is_quantized() {
            return format!("dense {}", storage.first().map_or("?", |s| s.0.as_str()));
        }
        storage
            .iter()
            .map(|(name, n)| format!("{name} \u{d7}{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_llama_cpp_type_choice() {
        // 896 columns (Qwen2.5-0.5B's hidden size) are not whole 256-blocks.
        assert_eq!(QuantTarget::Q4K.type_for(896, false), Some(GgmlType::Q5_0));
        assert_eq!(QuantTarget::Q4K.type_for(4864, false), Some(GgmlType::Q4_K));
        assert_eq!(QuantTarget::Q4K.type_for(1024, true), Some(GgmlType::Q6_K));
        assert_eq!(QuantTarget::Q4K.type_for(896, true), Some(GgmlType::Q8_0));
        assert_eq!(QuantTarget::Q6K.type_for(896, false), Some(GgmlType::Q8_0));
        assert_eq!(QuantTarget::Q4_0.type_for(896, true), Some(GgmlType::Q8_0));
        assert_eq!(QuantTarget::Q8_0.type_for(896, true), Some(GgmlType::Q8_0));
        assert_eq!(QuantTarget::Q8_0.type_for(40, false), None);
        assert_eq!(QuantTarget::Q6K.type_for(40, false), None);
        assert_eq!("Q4_K".parse::<QuantTarget>(), Ok(QuantTarget::Q4K));
        assert!("q5_k".parse::<QuantTarget>().unwrap_err().contains("q4_k"));
    }
}
