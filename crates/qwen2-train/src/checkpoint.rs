//! Checkpoints: the trained tensors, AdamW state and the step, plus a fingerprint of what the
//! numbers depend on. The data position, schedule and dropout seeds are functions of the step,
//! so a resumed run computes exactly what an uninterrupted one would. A checkpoint is written
//! to a temporary directory and renamed into place.

use std::path::{Path, PathBuf};

use burn::prelude::Tensor;
use burn::tensor::FloatDType;
use qwen2_core::model::WeightMut;
use qwen2_core::weights::Checkpoint as Safetensors;
use serde_json::{json, Value};

use crate::anomaly::GradProbe;
use crate::error::{Result, TrainError};
use crate::save::{write_atomic, SafetensorsWriter};
use crate::trainer::{is_trained, Trainer};

const STATE: &str = "trainer_state.json";
const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
/// Checkpoints kept in `out/checkpoints` (older ones are removed).
const KEEP: usize = 2;

/// What must be equal for a checkpoint to continue a run.
fn fingerprint<B: GradProbe>(t: &Trainer<B>) -> Value {
    let o = t.options();
    let c = t.model().config();
    json!({
        "model": {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                  "layers": c.num_hidden_layers, "intermediate_size": c.intermediate_size},
        "records": t.dataset().examples.len(),
        "lora": o.lora.as_ref().map(|l| json!({"r": l.r, "alpha": l.alpha, "dropout": l.dropout, "targets": l.targets})),
        "precision": o.precision.name(),
        "batch_size": o.batch_size,
        "grad_accum": o.grad_accum,
        "lr": o.lr,
        "lr_schedule": o.lr_schedule.to_string(),
        "warmup_steps": o.warmup_steps,
        "total_steps": t.total_steps(),
        "weight_decay": o.adamw.weight_decay,
        "betas": [o.adamw.beta1, o.adamw.beta2],
        "eps": o.adamw.eps,
        "max_grad_norm": o.max_grad_norm,
        "seed": o.seed,
        "shuffle": o.shuffle,
        "scaler": o.precision.scaled().then_some(json!({
            "init_scale": o.scaler.init_scale, "growth_factor": o.scaler.growth_factor,
            "backoff_factor": o.scaler.backoff_factor, "growth_interval": o.scaler.growth_interval,
        })),
    })
}

/// Saves the run's state under `out/checkpoints/checkpoint-<step>`.
pub fn save<B: GradProbe>(t: &mut Trainer<B>) -> Result<PathBuf> {
    let root = t.options().out.join("checkpoints");
    let dir = root.join(format!("checkpoint-{:06}", t.steps_done()));
    let tmp = root.join(format!(
        ".checkpoint-{:06}.tmp-{}",
        t.steps_done(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let state =
        json!({"format": 1, "step": t.steps_done(), "state": t.state, "run": fingerprint(t)});
    let full = t.options().lora.is_none();
    let (model, params, _) = t.parts_mut();
    let mut weights = SafetensorsWriter::default();
    model.visit_weights(&mut |name, kind, w| {
        if !is_trained(kind, full) {
            return;
        }
        match w {
            WeightMut::Vector(t) => weights.add_f32(name, t),
            WeightMut::Matrix(t) => weights.add_f32(name, t),
        }
    });
    weights.write(&tmp.join(PARAMS), None)?;
    let mut opt = SafetensorsWriter::default();
    for (name, m) in params.iter() {
        opt.add_f32(&format!("{name}.exp_avg"), &m.m);
        opt.add_f32(&format!("{name}.exp_avg_sq"), &m.v);
    }
    opt.write(&tmp.join(OPTIMIZER), None)?;
    let text = serde_json::to_string_pretty(&state).expect("state serializes");
    write_atomic(&tmp.join(STATE), text.as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
    prune(&root)?;
    tracing::info!(checkpoint = %dir.display(), "checkpoint saved");
    Ok(dir)
}

fn prune(root: &Path) -> Result<()> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| TrainError::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoint-"))
        })
        .collect();
    found.sort();
    for old in found.iter().rev().skip(KEEP) {
        std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
    }
    Ok(())
}

/// The newest checkpoint under `out/checkpoints`, or `dir` itself if it is one.
pub fn resolve(dir: &Path) -> Option<PathBuf> {
    if dir.join(STATE).is_file() {
        return Some(dir.to_path_buf());
    }
    let root = dir.join("checkpoints");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(STATE).is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Loads a checkpoint into `t`, after checking it belongs to the same run.
pub fn restore<B: GradProbe>(t: &mut Trainer<B>, dir: &Path) -> Result<()> {
    let bad = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let found = resolve(dir).ok_or_else(|| {
        bad(format!(
            "no {STATE} here or under checkpoints/ (not a checkpoint of qwen2 finetune)"
        ))
    })?;
    let state_path = found.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("{STATE} is not valid JSON: {e}")))?;
    let expected = fingerprint(t);
    let saved = &state["run"];
    if saved != &expected {
        let differs: Vec<String> = expected
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| saved.get(k.as_str()) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: checkpoint {} vs now {v}",
                    saved.get(k.as_str()).unwrap_or(&Value::Null)
                )
            })
            .collect();
        return Err(bad(format!(
            "made by a different run ({}); resume with the same options",
            differs.join("; ")
        )));
    }
    let step = state["step"]
        .as_u64()
        .ok_or_else(|| bad(format!("{STATE} has no step")))? as usize;
    let run_state: crate::records::RunState = serde_json::from_value(state["state"].clone())
        .map_err(|e| bad(format!("{STATE} has no valid run state: {e}")))?;
    let weights = Safetensors::open_file(found.join(PARAMS))?;
    let opt = Safetensors::open_file(found.join(OPTIMIZER))?;
    let device = t.model().device().clone();
    let full = t.options().lora.is_none();
    let (model, params, done) = t.parts_mut();
    let mut failure = None;
    let mut i = 0;
    model.visit_weights(&mut |name, kind, w| {
        if !is_trained(kind, full) || failure.is_some() {
            return;
        }
        let load = |n: &str, shape: &[usize]| {
            opt.load(n, shape, FloatDType::F32, false)
                .map(|d| Tensor::from_data(d, (&device, FloatDType::F32.into())))
        };
        let numel = params[i].1.m.shape().num_elements();
        let result = (|| -> qwen2_core::Result<()> {
            match w {
                WeightMut::Vector(t) => {
                    let d = weights.load(name, &t.dims(), FloatDType::F32, false)?;
                    *t = Tensor::from_data(d, (&device, FloatDType::F32.into())).require_grad();
                }
                WeightMut::Matrix(t) => {
                    let d = weights.load(name, &t.dims(), FloatDType::F32, false)?;
                    *t = Tensor::from_data(d, (&device, FloatDType::F32.into())).require_grad();
                }
            }
            params[i].1.m = load(&format!("{name}.exp_avg"), &[numel])?;
            params[i].1.v = load(&format!("{name}.exp_avg_sq"), &[numel])?;
            Ok(())
        })();
        if let Err(e) = result {
            failure = Some(e);
        }
        i += 1;
    });
    if let Some(e) = failure {
        return Err(bad(format!("cannot be loaded into this run: {e}")));
    }
    *done = step;
    let precision = run_state.precision;
    if precision != t.state.precision {
        t.apply_precision(precision); // the run had fallen back to a safer policy
    }
    t.state = run_state;
    tracing::info!(checkpoint = %found.display(), step, "resumed");
    Ok(())
}
