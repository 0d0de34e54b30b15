//! gemm 0.19 directly at prefill shapes: one thread, rayon, and two threads splitting N.
use std::time::Instant;

fn run(m: usize, k: usize, n: usize, par: gemm::Parallelism, a: &[f32], w: &[f32], c: &mut [f32]) {
    // a [m,k] row-major; w [n,k] row-major used as B = w^T [k,n]: B[kk][j] at j*k + kk.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

fn main() {
    for (k, n) in [(896usize, 4864usize), (4864, 896), (896, 896)] {
        let m = 128;
        let a: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 89) as f32 * 0.01).collect();
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        for (label, par) in [
            ("none", gemm::Parallelism::None),
            ("rayon", gemm::Parallelism::Rayon(0)),
        ] {
            run(m, k, n, par, &a, &w, &mut c);
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                run(m, k, n, par, &a, &w, &mut c);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "[{m},{k}]x[{k},{n}] {label:6} {:7.3} ms {:6.1} GFLOP/s",
                s * 1e3,
                flops / s / 1e9
            );
        }
        // Two threads, each half of N on its own.
        let t = Instant::now();
        let reps = 20;
        for _ in 0..reps {
            let half = n / 2;
            let (c1, c2) = c.split_at_mut(m * half);
            let _ = (c1, c2);
            std::thread::scope(|s| {
                let cp = c.as_mut_ptr() as usize;
                for part in 0..2 {
                    let (a, w) = (&a, &w);
                    s.spawn(move || unsafe {
                        let j0 = part * half;
                        gemm::gemm(
                            m,
                            half,
                            k,
                            (cp as *mut f32).add(j0),
                            1,
                            n as isize,
                            false,
                            a.as_ptr(),
                            1,
                            k as isize,
                            w.as_ptr().add(j0 * k),
                            k as isize,
                            1,
                            0.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    });
                }
            });
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "[{m},{k}]x[{k},{n}] split2 {:7.3} ms {:6.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        );
    }
}
