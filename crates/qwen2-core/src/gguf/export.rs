//! [`export_gguf`]: a Hugging Face Qwen2 directory written as a quantized GGUF model that this
//! engine, llama.cpp and the `gguf` Python package read: the metadata of `export_meta`,
//! tensors under llama.cpp's names ([`super::gguf_name`]), one tensor
//! quantized at a time, each with its relative quantization error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::FloatDType;
use qwen2_gguf::{GgmlType, GgufError, GgufWriter, MetadataValue};

use super::config::GGUF_ARCHITECTURE;
use super::{export_meta, gguf_name};
use crate::config::Qwen2Config;
use crate::error::{Error, Result};
use crate::weights::Checkpoint;

/// A quantization scheme, named as llama.cpp's `llama-quantize` types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// Every matrix Q8_0.
    Q8_0,
    /// Matrices Q4_0, the output matrix Q6_K (llama.cpp's rule).
    Q4_0,
    /// llama.cpp's Q4_K_M mix: Q4_K; Q6_K for the output matrix and for `attn_v`/`ffn_down`
    /// in the layers of `use_more_bits`.
    Q4KM,
    /// Every matrix Q6_K.
    Q6K,
}

impl QuantScheme {
    /// All schemes.
    pub const ALL: [QuantScheme; 4] = [Self::Q8_0, Self::Q4_0, Self::Q4KM, Self::Q6K];

    /// The CLI name (`q8_0`, `q4_0`, `q4_k_m`, `q6_k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4KM => "q4_k_m",
            Self::Q6K => "q6_k",
        }
    }

    /// llama.cpp's `general.file_type` (`LlamaFileType.MOSTLY_*`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
            Self::Q4KM => 15,
            Self::Q6K => 18,
        }
    }

    /// The type most matrices get.
    pub fn base_type(self) -> GgmlType {
        match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4KM => GgmlType::Q4_K,
            Self::Q6K => GgmlType::Q6_K,
        }
    }
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantScheme {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown type `{s}`: expected q8_0, q4_0, q4_k_m or q6_k"))
    }
}

/// One written tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    /// GGUF name.
    pub name: String,
    /// Stored type.
    #[serde(serialize_with = "type_name")]
    pub ggml_type: GgmlType,
    /// The type the scheme wanted when a fallback replaced it (row length not a multiple of
    /// its block size).
    #[serde(serialize_with = "opt_type_name")]
    pub fallback_from: Option<GgmlType>,
    /// GGUF dims (innermost first).
    pub dims: Vec<u64>,
    /// `‖dequant(quant(w)) − w‖₂ / ‖w‖₂` (0 for F32).
    pub rel_error: f64,
}

fn type_name<S: serde::Serializer>(t: &GgmlType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

fn opt_type_name<S: serde::Serializer>(
    t: &Option<GgmlType>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(t.name()),
        None => s.serialize_none(),
    }
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The GGUF file.
    pub path: PathBuf,
    /// The scheme.
    pub scheme: String,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorReport>,
}

/// llama.cpp's `use_more_bits`: layers given more bits by the `_M` mixes.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type of GGUF tensor `name` (`dims` innermost first) under `scheme`, and the type it
/// replaced when the row length does not fit that type's blocks (llama.cpp's fallbacks:
/// Q4_K → Q5_0, Q6_K → Q8_0, Q4_0/Q8_0 → F16). `has_output`: whether `output.weight` exists
/// (else `token_embd` is the output matrix, as in llama.cpp). Norms, biases: F32.
pub fn tensor_type(
    scheme: QuantScheme,
    name: &str,
    dims: &[u64],
    n_layers: usize,
    has_output: bool,
) -> (GgmlType, Option<GgmlType>) {
    if dims.len() < 2 || name.ends_with("_norm.weight") || name.ends_with(".bias") {
        return (GgmlType::F32, None);
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|b| b.parse::<usize>().ok());
    let is_output = name == "output.weight" || (!has_output && name == "token_embd.weight");
    let more_bits = scheme == QuantScheme::Q4KM
        && (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight"))
        && layer.is_some_and(|i| use_more_bits(i, n_layers));
    let wanted = if (is_output && scheme != QuantScheme::Q8_0) || more_bits {
        GgmlType::Q6_K
    } else {
        scheme.base_type()
    };
    let row = dims[0] as usize;
    if row.is_multiple_of(wanted.block_size()) {
        return (wanted, None);
    }
    let fallback = match wanted {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    let fallback = if row.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlType::F16
    };
    (fallback, Some(wanted))
}

/// `‖dequant(q) − w‖₂ / ‖w‖₂` (0 when `w` is all zeros and so is the round trip).
fn relative_error(ty: GgmlType, bytes: &[u8], w: &[f32]) -> Result<f64> {
    let back = qwen2_gguf::dequantize(ty, bytes)?;
    let (mut diff, mut norm) = (0f64, 0f64);
    for (a, b) in back.iter().zip(w) {
        diff += f64::from(a - b).powi(2);
        norm += f64::from(*b).powi(2);
    }
    Ok(if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    })
}

/// The HF names to export, in file order.
fn hf_names(config: &Qwen2Config, ckpt: &Checkpoint) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..config.num_hidden_layers {
        for module in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            names.push(format!("model.layers.{i}.{module}.weight"));
            let bias = format!("model.layers.{i}.{module}.bias");
            if ckpt.contains(&bias) {
                names.push(bias);
            }
        }
    }
    names.push("model.norm.weight".into());
    if !config.tie_word_embeddings || ckpt.contains("lm_head.weight") {
        names.push("lm_head.weight".into());
    }
    names
}

/// Refuses an output path that is a directory or one of the model directory's own files.
fn check_output(dir: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a directory: give the GGUF file to write",
            out.display()
        )));
    }
    if let (Ok(o), Ok(d)) = (out.canonicalize(), dir.canonicalize()) {
        let in_model = o.parent() == Some(d.as_path());
        if in_model && o.extension().and_then(|e| e.to_str()) != Some("gguf") {
            return Err(Error::Invalid(format!(
                "refusing to overwrite {}, a file of the input model",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Writes the Hugging Face Qwen2 model in `dir` as a GGUF file `out` quantized with `scheme`
/// (atomically: a temporary file renamed into place). `progress(done, total, name)` is called
/// before each tensor. Only one tensor is held in memory (as f32 plus its quantized bytes) at
/// a time. Errors name the file involved.
pub fn export_gguf(
    dir: &Path,
    out: &Path,
    scheme: QuantScheme,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ExportReport> {
    check_output(dir, out)?;
    let config = Qwen2Config::from_file(dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    if ckpt.gguf().is_some() {
        return Err(Error::Unsupported {
            path: dir.to_path_buf(),
            what: "quantizing a GGUF model: give a Hugging Face directory (config.json and \
                   safetensors)"
                .into(),
        });
    }
    let mut writer = GgufWriter::new();
    let mut meta: Vec<(String, MetadataValue)> = vec![
        ("general.architecture".into(), GGUF_ARCHITECTURE.into()),
        ("general.type".into(), "model".into()),
    ];
    if let Some(name) = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string))
    {
        meta.push(("general.name".into(), name.into()));
    }
    meta.extend(export_meta::model_metadata(&config));
    meta.push(("general.file_type".into(), scheme.file_type().into()));
    meta.extend(export_meta::tokenizer_metadata(dir, config.vocab_size)?);
    meta.push(("general.quantization_version".into(), 2u32.into()));
    for (k, v) in meta {
        writer.add_metadata(k, v)?;
    }

    let names = hf_names(&config, &ckpt);
    let has_output = names.iter().any(|n| n == "lm_head.weight");
    let mut plan = Vec::with_capacity(names.len());
    for hf in &names {
        let shape = ckpt.shape(hf).ok_or_else(|| Error::MissingTensor {
            name: hf.clone(),
            location: dir.display().to_string(),
        })?;
        let shape = shape.to_vec();
        let gname = gguf_name(hf).expect("every exported HF name has a GGUF name");
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let (ty, fallback_from) =
            tensor_type(scheme, &gname, &dims, config.num_hidden_layers, has_output);
        if let Some(from) = fallback_from {
            tracing::info!(tensor = %gname, row = dims[0], wanted = %from, used = %ty,
                "row length not a multiple of the block size: falling back");
        }
        writer.add_tensor_info(&gname, ty, &dims)?;
        plan.push((hf.clone(), shape, fallback_from));
    }

    let total = plan.len();
    let mut reports = Vec::with_capacity(total);
    let mut failure: Option<Error> = None;
    let mut next = plan.into_iter();
    let written = writer.write_with(out, |info| {
        let (hf, shape, fallback_from) = next.next().expect("one provider call per tensor");
        progress(reports.len(), total, info.name());
        let mut run = || -> Result<Vec<u8>> {
            let data = ckpt.load(&hf, &shape, FloatDType::F32, false)?;
            let w: Vec<f32> = data
                .into_vec::<f32>()
                .map_err(|e| Error::Invalid(format!("tensor {hf}: {e:?}")))?;
            let bytes = qwen2_gguf::quantize(info.ggml_type(), &w)?;
            let rel_error = relative_error(info.ggml_type(), &bytes, &w)?;
            tracing::debug!(tensor = info.name(), ty = %info.ggml_type(), rel_error);
            reports.push(TensorReport {
                name: info.name().to_string(),
                ggml_type: info.ggml_type(),
                fallback_from,
                dims: info.dims().to_vec(),
                rel_error,
            });
            Ok(bytes)
        };
        run().map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            GgufError::InvalidArgument(message)
        })
    });
    if let Err(e) = written {
        return Err(failure.unwrap_or(Error::Gguf(e)));
    }
    progress(total, total, "");
    let file_bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(ExportReport {
        path: out.to_path_buf(),
        scheme: scheme.name().to_string(),
        file_bytes,
        tensors: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_types_follow_llama_cpp() {
        // 24 layers (qwen2-0.5B): use_more_bits picks 0..3, 5, 8, ..., 21..24.
        let more: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(more, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
        let t = |name: &str, row: u64| tensor_type(QuantScheme::Q4KM, name, &[row, 8], 24, true);
        assert_eq!(t("blk.0.attn_v.weight", 512), (GgmlType::Q6_K, None));
        assert_eq!(t("blk.3.attn_v.weight", 512), (GgmlType::Q4_K, None));
        assert_eq!(t("blk.5.ffn_down.weight", 512), (GgmlType::Q6_K, None));
        assert_eq!(t("output.weight", 512), (GgmlType::Q6_K, None));
        assert_eq!(
            t("blk.3.attn_q.weight", 896),
            (GgmlType::Q5_0, Some(GgmlType::Q4_K))
        );
        assert_eq!(
            t("output.weight", 896),
            (GgmlType::Q8_0, Some(GgmlType::Q6_K))
        );
        assert_eq!(
            tensor_type(
                QuantScheme::Q4KM,
                "blk.0.attn_norm.weight",
                &[896],
                24,
                true
            ),
            (GgmlType::F32, None)
        );
        assert_eq!(
            tensor_type(QuantScheme::Q8_0, "token_embd.weight", &[64, 320], 2, false),
            (GgmlType::Q8_0, None)
        );
        assert_eq!(qwen2_gguf::QK_K, 256);
    }
}
