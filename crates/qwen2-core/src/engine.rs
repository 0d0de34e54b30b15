//! Loading a model the way every front end does: the CLI's commands and the server share this.
//!
//! A [`ModelLoader`] resolves `--precision` on the first device of a [`Platform`] (the policy
//! table, the checkpoint's dtype, the fallback chain) and loads the model under any policy of
//! that chain, with its adapter and context limit. [`TextAssets`] holds what turns text into ids
//! and back: the tokenizer, the chat template and the generation defaults.

use std::path::{Path, PathBuf};

use crate::config::Qwen2Config;
use crate::error::{Error, Result};
use crate::fallback::{run_with_fallback, Outcome};
use crate::generate::GenerateOptions;
use crate::model::WeightQuantization;
use crate::monitor::MonitorMode;
use crate::precision::{Choice, Hardware, ModelFacts, Policy, Resolved};
use crate::text::{ChatTemplate, GenerationConfig, SamplingOverrides, TextTokenizer};
use crate::{Platform, Qwen2Model};

/// What to load and how.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The model directory (config.json, *.safetensors, tokenizer files) or GGUF model (a
    /// `.gguf` file, a shard of a split set, a directory holding one).
    pub dir: PathBuf,
    /// A PEFT LoRA adapter directory applied on top.
    pub adapter: Option<PathBuf>,
    /// The precision the user asked for.
    pub precision: Choice,
    /// On inf/NaN: `Some(true)` falls back to a safer plan, `Some(false)` fails; `None` falls
    /// back when the precision was `auto`.
    pub fallback: Option<bool>,
    /// The KV cache capacity in positions (at most the model's context); `None`: the context.
    pub ctx_size: Option<usize>,
    /// How projection weights are held: by default a GGUF model's quantized tensors stay
    /// quantized on backends with quantized kernels (see [`WeightQuantization`]).
    pub quantization: WeightQuantization,
}

impl ModelSpec {
    /// `dir` with `auto` precision and every default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            adapter: None,
            precision: Choice::Auto,
            fallback: None,
            ctx_size: None,
            quantization: WeightQuantization::Stored,
        }
    }
}

/// A model directory resolved on a device: the plan to run and the plans to fall back to.
pub struct ModelLoader<P: Platform> {
    spec: ModelSpec,
    device: burn::tensor::Device<P::B>,
    hardware: Hardware,
    resolved: Resolved,
    fallback: bool,
    quantized_weights: bool,
}

impl<P: Platform> ModelLoader<P> {
    /// Resolves `spec` on the first device of `P`.
    pub fn new(spec: ModelSpec) -> Result<Self> {
        let device = first_device::<P>()?;
        Self::on_device(spec, device)
    }

    /// Resolves `spec` on `device`.
    pub fn on_device(spec: ModelSpec, device: burn::tensor::Device<P::B>) -> Result<Self> {
        check_model_dir(&spec.dir)?;
        let ckpt = crate::weights::Checkpoint::open(&spec.dir)?;
        let stored_quantized = ckpt.gguf().is_some()
            && !matches!(
                ckpt.stored_dtype(),
                Some("float32" | "float16" | "bfloat16") | None
            );
        let facts = ModelFacts {
            quantized_weights: P::multiplies_quantized()
                && match spec.quantization {
                    WeightQuantization::Dense => false,
                    WeightQuantization::Stored => stored_quantized,
                    WeightQuantization::To(_) => true,
                },
            ..ModelFacts::from_checkpoint(&ckpt)
        };
        drop(ckpt);
        let hardware = P::probe(&device);
        let resolved = P::policy_table().select_for(&hardware, &facts, spec.precision)?;
        tracing::info!(hardware = %hardware, policy = %resolved.policy, rule = ?resolved.rule,
            reason = %resolved.reason, "precision plan");
        let fallback = spec.fallback.unwrap_or(resolved.auto);
        Ok(Self {
            spec,
            device,
            hardware,
            resolved,
            fallback,
            quantized_weights: facts.quantized_weights,
        })
    }

    /// What was asked for.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The device the model runs on.
    pub fn device(&self) -> &burn::tensor::Device<P::B> {
        &self.device
    }

    /// What the device is.
    pub fn hardware(&self) -> &Hardware {
        &self.hardware
    }

    /// The plan to run first, its reason and the safer plans after it.
    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// Whether the projection weights will be held quantized (a GGUF's quantized tensors on a
    /// backend with quantized kernels, or [`WeightQuantization::To`]).
    pub fn quantized_weights(&self) -> bool {
        self.quantized_weights
    }

    /// Whether a non-finite result falls back to the next plan.
    pub fn falls_back(&self) -> bool {
        self.fallback
    }

    /// Whether output may restart under another plan (so a front end should not stream it).
    pub fn may_restart(&self) -> bool {
        self.fallback && !self.resolved.fallbacks.is_empty()
    }

    /// The plans a run tries, in order: the resolved one, then (with fallback on) the safer ones.
    pub fn chain(&self) -> Vec<Policy> {
        let mut chain = vec![self.resolved.policy];
        if self.fallback {
            chain.extend(self.resolved.fallbacks.iter().copied());
        }
        chain
    }

    /// Loads the model under `policy` with the adapter and the context limit; `progress(done,
    /// total)` is called after each loading step.
    pub fn load(
        &self,
        policy: Policy,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Qwen2Model<P::B>> {
        tracing::info!(backend = P::NAME, %policy, model = %self.spec.dir.display(), "loading");
        let start = std::time::Instant::now();
        let mut model = P::load_model_quantized(
            &self.spec.dir,
            policy.plan(),
            self.spec.quantization,
            &self.device,
            progress,
        )?;
        if let Some(dir) = &self.spec.adapter {
            let adapter = crate::adapter::Adapter::open(dir)?;
            adapter.attach(&mut model, burn::tensor::FloatDType::F32)?;
        }
        if let Some(n) = self.spec.ctx_size {
            model.limit_context(n)?;
        }
        tracing::info!(seconds = start.elapsed().as_secs_f64(), "model loaded");
        Ok(model)
    }

    /// Runs `attempt` under the resolved plan and, when it overflows and fallback is on, under
    /// each safer plan in turn.
    pub fn run<T>(&self, attempt: impl FnMut(Policy) -> Result<T>) -> Result<Outcome<T>> {
        run_with_fallback(&self.resolved, self.fallback, attempt)
    }
}

/// The first device of `P`, or an error that says what the machine lacks.
pub fn first_device<P: Platform>() -> Result<burn::tensor::Device<P::B>> {
    P::devices().into_iter().next().ok_or_else(|| {
        Error::Invalid(format!(
            "backend `{}` has no usable device on this machine{}",
            P::NAME,
            match P::NAME {
                "wgpu" => " (no Vulkan/Metal/DX12 adapter; on Linux without a GPU, install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers)",
                "cuda" => " (no NVIDIA driver or GPU found)",
                _ => "",
            }
        ))
    })
}

/// A model path that does not exist, is a file but not a GGUF model, or is a directory with
/// neither config.json nor a GGUF model (or an ambiguous one) is the first thing to say.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    let flag = |message: String| {
        Err(Error::Invalid(format!(
            "--model {}: {message}",
            dir.display()
        )))
    };
    if !dir.exists() {
        let what = if dir.extension().is_some_and(|e| e == "gguf") {
            "file"
        } else {
            "directory"
        };
        return flag(format!("no such {what}"));
    }
    match crate::source::gguf_model_path(dir) {
        Err(Error::Invalid(m)) => {
            return flag(m.split_once(": ").map_or(m.clone(), |(_, r)| r.into()))
        }
        Err(e) => return Err(e),
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
    }
    if !dir.is_dir() {
        return flag(
            "is a file; give the model directory (config.json, *.safetensors, tokenizer.json) \
             or a .gguf file"
                .into(),
        );
    }
    if !dir.join("config.json").exists() {
        return flag(
            "holds no config.json (a Hugging Face model directory) and no .gguf file".into(),
        );
    }
    Ok(())
}

/// Per-request generation settings; `None` takes the model's defaults.
#[derive(Debug, Clone, Default)]
pub struct GenerationRequest {
    /// Temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Top-k (0 = off).
    pub top_k: Option<usize>,
    /// Top-p (1 = off).
    pub top_p: Option<f32>,
    /// Min-p (0 = off).
    pub min_p: Option<f32>,
    /// HF repetition penalty (1 = off).
    pub repetition_penalty: Option<f32>,
    /// Sampler seed; `None` draws a fresh one.
    pub seed: Option<u64>,
    /// Token budget.
    pub max_new_tokens: Option<usize>,
    /// End-of-sequence ids replacing the model's (and the chat markers).
    pub eos: Option<Vec<u32>>,
}

/// Runs `f` on a worker of the rayon pool and waits for it: every front end runs its model
/// loop (prefill, decode steps, the server's scheduler) this way. The CPU kernels' parallel
/// loops and work sharing then start from a pool thread, so the pool's threads are all the
/// threads computing; from a thread outside the pool, the caller and the pool's idle workers
/// compete for the cores (measured on 2 cores, Q4_K_M: decode 3–8% and prefill 4–13% faster
/// on the pool). Nested calls run `f` in place.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// A seed for a run that gave none: the clock's nanoseconds mixed with the process id and a
/// counter, so two runs in the same instant differ.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed =
        nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    tracing::info!(seed, "no seed given: sampling with a fresh seed");
    seed
}

/// What turns text into ids and back for one model directory, and its generation defaults.
#[derive(Debug)]
pub struct TextAssets {
    /// The model's tokenizer.
    pub tokenizer: TextTokenizer,
    /// The chat template (tokenizer_config.json's, or ChatML).
    pub template: ChatTemplate,
    /// generation_config.json (empty when the file is missing).
    pub generation: GenerationConfig,
    /// config.json's eos ids, used when generation_config.json names none.
    pub config_eos: Vec<u32>,
}

impl TextAssets {
    /// Reads the tokenizer, chat template and generation defaults of `dir`; for a GGUF model,
    /// the tokenizer and chat template from its metadata, HF's generation defaults and its eos.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        if let Some(file) = crate::source::gguf_model_path(dir)? {
            let model = qwen2_gguf::GgufModel::open(file)?;
            return Ok(Self {
                tokenizer: TextTokenizer::from_gguf(&model)?,
                template: ChatTemplate::from_gguf(&model)?,
                generation: GenerationConfig::default(),
                config_eos: Qwen2Config::from_gguf(&model)?.eos_token_ids,
            });
        }
        Ok(Self {
            tokenizer: TextTokenizer::from_model_dir(dir)?,
            template: ChatTemplate::from_model_dir(dir)?,
            generation: GenerationConfig::from_model_dir(dir)?,
            config_eos: Qwen2Config::from_file(dir.join("config.json"))?.eos_token_ids,
        })
    }

    /// The ids of the ChatML turn markers the tokenizer has (extra eos ids for chat).
    pub fn chat_end_ids(&self) -> Vec<u32> {
        chat_end_ids(&self.tokenizer)
    }
}

/// The ids of the ChatML turn markers `tokenizer` has.
pub fn chat_end_ids(tokenizer: &TextTokenizer) -> Vec<u32> {
    ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tokenizer.token_id(t))
        .collect()
}

/// Sampling, token budget and eos ids: the request's values where given, else
/// generation_config.json's, else config.json's eos ids and `default_max_new_tokens`.
/// `extra_eos` (such as the chat template's `<|im_end|>`) joins the eos ids unless the request
/// names its own. Errors name the offending setting (`temperature`, `top_p`, ...).
pub fn generate_options(
    generation: &GenerationConfig,
    config_eos: &[u32],
    request: &GenerationRequest,
    extra_eos: &[u32],
    default_max_new_tokens: usize,
) -> Result<GenerateOptions> {
    let sampling = generation.sampling(&SamplingOverrides {
        temperature: request.temperature,
        top_k: request.top_k,
        top_p: request.top_p,
        min_p: request.min_p,
        repetition_penalty: request.repetition_penalty,
        seed: request.seed.unwrap_or_else(fresh_seed),
    });
    sampling.validate()?;
    let eos_token_ids = match &request.eos {
        Some(ids) => ids.clone(),
        None => {
            let mut ids = generation
                .eos_token_id
                .clone()
                .unwrap_or_else(|| config_eos.to_vec());
            for id in extra_eos {
                if !ids.contains(id) {
                    ids.push(*id);
                }
            }
            ids
        }
    };
    let max_new_tokens = request
        .max_new_tokens
        .or(generation.max_new_tokens)
        .unwrap_or(default_max_new_tokens);
    tracing::info!(
        ?sampling,
        ?eos_token_ids,
        max_new_tokens,
        "generation settings"
    );
    Ok(GenerateOptions {
        max_new_tokens,
        sampling,
        eos_token_ids,
        monitor: Some(MonitorMode::Cheap),
        ..GenerateOptions::greedy(max_new_tokens)
    })
}
