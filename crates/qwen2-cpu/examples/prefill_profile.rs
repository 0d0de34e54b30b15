//! Where a CPU prefill spends its time, op group by op group (the observer is called after
//! each group; burn-flex runs eagerly, so the gaps are the groups' costs).
//! `cargo run --release -p qwen2-cpu --example prefill_profile -- MODEL_DIR [f32|bf16] [LEN] [decode]`
use std::collections::BTreeMap;
use std::time::Instant;

use burn::prelude::{Backend, Tensor};
use qwen2_core::model::LogitsFor;
use qwen2_core::observe::{Observer, Site};
use qwen2_core::platform::Platform;
use qwen2_core::precision::Policy;
use qwen2_cpu::Cpu;

struct Timer {
    last: Instant,
    spent: BTreeMap<String, f64>,
}

impl<B: Backend> Observer<B> for Timer {
    fn wants(&self, _site: Site) -> bool {
        true
    }
    fn observe(&mut self, site: Site, _t: &Tensor<B, 2>) {
        let now = Instant::now();
        let key = format!("{:?}", site.op);
        *self.spent.entry(key).or_default() += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    let policy = match args.get(2).map(String::as_str) {
        Some("bf16") => Policy::Bf16,
        _ => Policy::F32,
    };
    let len: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(128);
    let device = Default::default();
    let model = Cpu::load_model(dir, policy.plan(), &device, &mut |_, _| {}).unwrap();
    let ids: Vec<u32> = (0..len as u32).map(|i| (i * 7919) % 150000).collect();
    if args.get(4).map(String::as_str) == Some("decode") {
        let steps = 16;
        let mut cache = model.new_cache(len + steps);
        model.forward(&ids, &mut cache, LogitsFor::Last).unwrap();
        let mut t = Timer {
            last: Instant::now(),
            spent: BTreeMap::new(),
        };
        let start = Instant::now();
        for s in 0..steps {
            t.last = Instant::now();
            let logits = model
                .forward_observed(&[s as u32 + 1], &mut cache, LogitsFor::Last, &mut t)
                .unwrap();
            let _ = logits.into_data();
        }
        let total = start.elapsed().as_secs_f64();
        println!("decode: {:.1} ms/token", total * 1e3 / steps as f64);
        for (k, v) in &t.spent {
            println!("  {k:20} {:7.2} ms/token", v * 1e3 / steps as f64);
        }
        return;
    }
    for rep in 0..3 {
        let mut cache = model.new_cache(len + 1);
        let mut t = Timer {
            last: Instant::now(),
            spent: BTreeMap::new(),
        };
        let start = Instant::now();
        let logits = model
            .forward_observed(&ids, &mut cache, LogitsFor::Last, &mut t)
            .unwrap();
        let _ = logits.into_data();
        let total = start.elapsed().as_secs_f64();
        println!("rep {rep}: {total:.3} s = {:.1} tok/s", len as f64 / total);
        for (k, v) in &t.spent {
            println!("  {k:20} {:7.1} ms {:5.1}%", v * 1e3, v / total * 100.0);
        }
    }
}
