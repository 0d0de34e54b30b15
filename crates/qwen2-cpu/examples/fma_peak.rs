//! Peak f32 FMA throughput per thread and with all threads (AVX2, 10 independent chains).
use std::arch::x86_64::*;
use std::time::Instant;

#[target_feature(enable = "avx2,fma")]
unsafe fn spin(iters: usize) -> f32 {
    let mut acc = [_mm256_set1_ps(0.0); 10];
    let a = _mm256_set1_ps(1.0000001);
    let b = _mm256_set1_ps(0.9999999);
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for r in acc {
        s = _mm256_add_ps(s, r);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

fn main() {
    let iters = 200_000_000 / 10;
    let flops = iters as f64 * 10.0 * 16.0;
    for threads in [1, 2] {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| std::hint::black_box(unsafe { spin(iters) }));
            }
        });
        let sec = t.elapsed().as_secs_f64();
        println!(
            "{threads} thread(s): {:.1} GFLOP/s",
            flops * threads as f64 / sec / 1e9
        );
    }
}
