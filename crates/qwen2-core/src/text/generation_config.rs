//! `generation_config.json`: the sampling defaults a model ships with.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// The fields of `generation_config.json` that generation uses. Absent fields stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationConfig {
    /// `false` means greedy whatever the temperature says.
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// Softmax temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Drop tokens less likely than `min_p` × the most likely one.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// HF's repetition penalty (1: off).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Ids that end generation: one id or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Option<Vec<u32>>,
    /// Tokens to generate at most.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; a directory without one, or a GGUF model (which
    /// holds no generation defaults), gives the empty config.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("generation_config.json");
        if crate::source::gguf_model_path(dir.as_ref())?.is_some() || !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
        Ok(config)
    }

    /// The sampling settings: `overrides` where given, else this config's, else HF's defaults.
    /// Sampling is on when the temperature override is > 0, or, without one, when the config
    /// says `do_sample: true`; otherwise decoding is greedy (the repetition penalty still applies).
    pub fn sampling(&self, overrides: &SamplingOverrides) -> SamplingParams {
        let config_samples = self.do_sample == Some(true);
        let sampling_on = overrides.temperature.map_or(config_samples, |t| t != 0.0);
        SamplingParams {
            temperature: if sampling_on {
                overrides.temperature.or(self.temperature).unwrap_or(1.0)
            } else {
                0.0
            },
            // HF's top_k default (50) applies only when the config itself turns sampling on.
            top_k: overrides
                .top_k
                .or(self.top_k)
                .unwrap_or(if config_samples { 50 } else { 0 }),
            top_p: overrides.top_p.or(self.top_p).unwrap_or(1.0),
            min_p: overrides.min_p.or(self.min_p).unwrap_or(0.0),
            repetition_penalty: overrides
                .repetition_penalty
                .or(self.repetition_penalty)
                .unwrap_or(1.0),
            seed: overrides.seed,
        }
    }
}

/// Sampling settings given by the user, each overriding `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingOverrides {
    /// 0 forces greedy decoding, > 0 forces sampling at that temperature.
    pub temperature: Option<f32>,
    /// Top-k (0 = off).
    pub top_k: Option<usize>,
    /// Top-p (1 = off).
    pub top_p: Option<f32>,
    /// Min-p (0 = off).
    pub min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler.
    pub seed: u64,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(id) => vec![id],
        OneOrMany::Many(ids) => ids,
    }))
}
