//! Small f32 matrix products over strided slices (heads inside `[rows, heads * head_dim]`
//! activations) on the `gemm` crate, with the bounds checked before its raw-pointer call.

use gemm::Parallelism;

/// A matrix inside a slice: element `(i, j)` at `offset + i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    /// Rows `rows × cols` from `offset`, row stride `rs`, columns adjacent.
    pub fn rows(offset: usize, rows: usize, cols: usize, rs: usize) -> View {
        View {
            offset,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of the same memory.
    pub fn t(self) -> View {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// One past the last element read or written.
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.offset;
        }
        self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
    }
}

/// `dst (+)= lhs · rhs` in f32 (single-threaded: callers run one per task); `accumulate` adds
/// to what `dst` holds, else overwrites it.
pub fn matmul(
    dst: &mut [f32],
    d: View,
    accumulate: bool,
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
) {
    assert!(
        l.cols == r.rows && d.rows == l.rows && d.cols == r.cols,
        "shapes {l:?} × {r:?} → {d:?}"
    );
    assert!(d.end() <= dst.len() && l.end() <= lhs.len() && r.end() <= rhs.len());
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    if l.cols == 0 {
        if !accumulate {
            for i in 0..d.rows {
                for j in 0..d.cols {
                    dst[d.offset + i * d.rs + j * d.cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: every element the product touches lies inside the slices (checked above), and
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.offset),
            r.cs as isize,
            r.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_the_naive_sums() {
        // lhs: columns 2..5 of a [4, 7] block; rhs: the transpose of rows of a [3, 5] block.
        let lhs: Vec<f32> = (0..28).map(|i| (i as f32 * 0.37).sin()).collect();
        let rhs: Vec<f32> = (0..15).map(|i| (i as f32 * 0.71).cos()).collect();
        let l = View::rows(2, 4, 3, 7);
        let r = View::rows(0, 5, 3, 3).t();
        let mut dst = vec![1.0f32; 4 * 6];
        let d = View::rows(1, 4, 5, 6);
        matmul(&mut dst, d, true, &lhs, l, &rhs, r);
        for i in 0..4 {
            for j in 0..5 {
                let want: f32 = 1.0
                    + (0..3)
                        .map(|p| lhs[2 + i * 7 + p] * rhs[j * 3 + p])
                        .sum::<f32>();
                let got = dst[1 + i * 6 + j];
                assert!((got - want).abs() < 1e-5, "({i},{j}): {got} vs {want}");
            }
            assert_eq!(dst[i * 6], 1.0, "column 0 untouched");
        }
    }
}
