//! Building a [`Qwen2Model`] from a checkpoint: HF safetensors or GGUF, dense or quantized.

use std::path::Path;

use burn::prelude::Backend;

use super::*;

impl<B: Backend> Qwen2Model<B> {
    /// Loads `config.json` and the safetensors checkpoint of a HF model directory, or a GGUF
    /// model (a `.gguf` file, a shard of a split set, a directory holding one; every tensor
    /// dequantized to the plan's weight dtype), storing the weights in `plan.weights` on
    /// `device`.
    pub fn load(dir: impl AsRef<Path>, plan: PrecisionPlan, device: &B::Device) -> Result<Self> {
        Self::load_with_progress(dir, plan, device, &mut |_, _| {})
    }

    /// [`Qwen2Model::load`] that calls `progress(done, total)` after each loading step (the
    /// embedding, each decoder layer, the head), for a progress bar on real-size models.
    pub fn load_with_progress(
        dir: impl AsRef<Path>,
        plan: PrecisionPlan,
        device: &B::Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::load_quantized(dir, plan, WeightQuantization::Dense, device, progress)
    }

    /// [`Qwen2Model::load_with_progress`] with the projection weights held as `quant` says
    /// (kept quantized for backends with quantized kernels; see [`WeightQuantization`]).
    pub fn load_quantized(
        dir: impl AsRef<Path>,
        plan: PrecisionPlan,
        quant: WeightQuantization,
        device: &B::Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let (config, ckpt) = match crate::source::ModelSource::resolve(dir)? {
            crate::source::ModelSource::HfDir(dir) => (
                Qwen2Config::from_file(dir.join("config.json"))?,
                Checkpoint::open(&dir)?,
            ),
            crate::source::ModelSource::Gguf(file) => {
                let model = qwen2_gguf::GgufModel::open(&file)?;
                tracing::info!(file = %file.display(), shards = model.shards().len(), ?quant,
                    "loading a GGUF model");
                (
                    Qwen2Config::from_gguf(&model)?,
                    Checkpoint::from_gguf(model),
                )
            }
        };
        Self::from_checkpoint_with_progress(config, &ckpt, plan, quant, device, progress)
    }

    /// Builds the model from an already opened checkpoint.
    pub fn from_checkpoint(
        config: Qwen2Config,
        ckpt: &Checkpoint,
        plan: PrecisionPlan,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_checkpoint_with_progress(
            config,
            ckpt,
            plan,
            WeightQuantization::Dense,
            device,
            &mut |_, _| {},
        )
    }

    fn from_checkpoint_with_progress(
        config: Qwen2Config,
        ckpt: &Checkpoint,
        plan: PrecisionPlan,
        quant: WeightQuantization,
        device: &B::Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let c = &config;
        let w = plan.weights;
        // A GGUF's quantized embedding stays quantized (it is the tied head, too);
        // `--quantize` leaves the embedding as it is.
        let embed_quant = match quant {
            WeightQuantization::Stored => WeightQuantization::Stored,
            _ => WeightQuantization::Dense,
        };
        let embed_tokens = ProjectionWeight::load(
            ckpt,
            "model.embed_tokens.weight",
            [c.vocab_size, c.hidden_size],
            w,
            embed_quant,
            true,
            device,
        )?;
        let steps = c.num_hidden_layers + 2;
        progress(1, steps);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            tracing::info!(
                layer = i + 1,
                of = c.num_hidden_layers,
                "loading decoder layer"
            );
            layers.push(DecoderLayer::load(ckpt, i, c, w, quant, device)?);
            progress(i + 2, steps);
        }
        let norm = RmsNorm::load(ckpt, "model.norm", c.hidden_size, c.rms_norm_eps, w, device)?;
        let has_head = ckpt.contains("lm_head.weight");
        let lm_head = if has_head {
            if c.tie_word_embeddings {
                tracing::warn!(
                    "tie_word_embeddings is set but lm_head.weight exists; using lm_head.weight"
                );
            }
            Some(Linear::load(
                ckpt,
                "lm_head",
                c.hidden_size,
                c.vocab_size,
                false,
                w,
                quant,
                device,
            )?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(Error::MissingTensor {
                name: "lm_head.weight".into(),
                location: "the checkpoint (tie_word_embeddings is false)".into(),
            });
        };
        let tied_head_quantized = match (&lm_head, quant) {
            // (A head whose rows are not whole blocks stays the dense embedding: no second
            // dense load just to drop it.)
            (None, WeightQuantization::To(t)) if t.type_for(c.hidden_size, true).is_some() => {
                match ProjectionWeight::<B>::load(
                    ckpt,
                    "model.embed_tokens.weight",
                    [c.vocab_size, c.hidden_size],
                    w,
                    quant,
                    true,
                    device,
                )? {
                    ProjectionWeight::Quantized(q) => Some(q),
                    ProjectionWeight::Dense(_) => None,
                }
            }
            _ => None,
        };
        let rope = Rope::new(c, context_length(c), device);
        progress(steps, steps);
        Ok(Qwen2Model {
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied_head_kernel: None,
            tied_head_quantized,
            context_limit: None,
            rope,
            config,
            plan,
            device: device.clone(),
        })
    }
}
