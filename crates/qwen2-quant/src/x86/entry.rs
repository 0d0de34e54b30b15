//! [`simd_row_kernels!`]: the `#[target_feature]` entry points of the generic kernels and the
//! safe [`RowsFn`](crate::kernels::RowsFn)s that drive them over weight and activation rows.

/// Weight rows per entry-point call with one activation row (decode): consecutive rows, each
/// streamed whole before the next.
pub(crate) const DECODE_ROWS: usize = 4;

/// Defines module `$module` with `kernel(path)`, which hands out a safe
/// [`RowsFn`](crate::kernels::RowsFn) only for an available path, from one generic kernel
/// `$kernel::<E, N>(w, nb, xs) -> [f32; N]` (`E` the [`IntDot`](super::IntDot) of the path) or
/// from one kernel per variant:
///
/// - `avx2 = [k<Block>, rows = kr<Block>]`, `vnni = [...]`: called as `k::<Block, E, N>`
///   (`N` activation rows) and `kr::<Block, E, R>(w, row_bytes, nb, x)` (decode: `R`
///   consecutive weight rows, one after the other, with one activation row, reducing the rows'
///   accumulators together; without `rows`, the one-row kernel per row);
/// - `vbmi = [...]`: optionally, a VNNI variant that also needs AVX-512 VBMI, used on the VNNI
///   path where the CPU has it.
///
/// `$act` is the activation element type: an activation row holds `$act_len(nb)` of them for
/// `nb` weight blocks of `$block_bytes` bytes per row.
///
/// Decode interleaving two adjacent rows (sharing the activation loads) defeated the hardware
/// prefetcher on weights streamed from DRAM (2.5× slower), and two rows half a chunk apart
/// gained nothing: the rows of a call are streamed one after the other.
macro_rules! simd_row_kernels {
    ($(#[$doc:meta])* $module:ident, $act:ty, $act_len:path, $block_bytes:expr,
     $kernel:ident) => {
        // Without AVX-512F/BW in the entry points: enabling them changed the code generated
        // for the k-quants (Q6_K prefill 8% slower).
        $crate::x86::simd_row_kernels!(
            @vnni_features "avx2,fma,f16c,avx512vnni,avx512vl";
            $(#[$doc])* $module, $act, $act_len, $block_bytes,
            avx2 = [$kernel], vnni = [$kernel]
        );
    };
    ($(#[$doc:meta])* $module:ident, $act:ty, $act_len:path, $block_bytes:expr,
     avx2 = [$($avx2:tt)*], vnni = [$($vnni:tt)*] $(, vbmi = [$($vbmi:tt)*])?) => {
        $crate::x86::simd_row_kernels!(
            @vnni_features "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni";
            $(#[$doc])* $module, $act, $act_len, $block_bytes,
            avx2 = [$($avx2)*], vnni = [$($vnni)*] $(, vbmi = [$($vbmi)*])?
        );
    };
    (@vnni_features $vnni_features:literal;
     $(#[$doc:meta])* $module:ident, $act:ty, $act_len:path, $block_bytes:expr,
     avx2 = [$($avx2:tt)*], vnni = [$($vnni:tt)*] $(, vbmi = [$($vbmi:tt)*])?) => {
        $(#[$doc])*
        pub(crate) mod $module {
            use super::*;
            use crate::dispatch::KernelPath;
            use crate::kernels::RowsFn;

            $crate::x86::entry::variant!(
                avx2, "avx2,fma,f16c", Avx2Dot, $act, $act_len, $block_bytes, $($avx2)*
            );
            $crate::x86::entry::variant!(
                vnni, $vnni_features, VnniDot, $act, $act_len, $block_bytes, $($vnni)*
            );
            $(
                $crate::x86::entry::variant!(
                    vbmi, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi",
                    VnniDot, $act, $act_len, $block_bytes, $($vbmi)*
                );
            )?

            /// The kernel for `path`, or `None` when it is not a SIMD path or this CPU lacks
            /// its features.
            pub(crate) fn kernel(path: KernelPath) -> Option<RowsFn<$act>> {
                match path {
                    KernelPath::Avx2 if path.is_available() => Some(avx2::rows),
                    KernelPath::Avx512Vnni if path.is_available() => {
                        $(
                            let _ = stringify!($($vbmi)*);
                            if crate::dispatch::has_avx512_vbmi() {
                                return Some(vbmi::rows);
                            }
                        )?
                        Some(vnni::rows)
                    }
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use simd_row_kernels;

/// Module `$name`: the entry points of one kernel variant compiled with `$features` and its
/// safe `rows` driver (see [`simd_row_kernels!`]).
macro_rules! variant {
    ($name:ident, $features:literal, $dot:ty, $act:ty, $act_len:path, $block_bytes:expr,
     $kernel:ident $(<$block:ty>)? $(, rows = $rows:ident<$rows_block:ty>)?) => {
        pub(crate) mod $name {
            use super::*;
            use $crate::x86::entry::DECODE_ROWS;

            /// # Safety
            /// The CPU must support the variant's features; `w` must hold `nb` weight blocks
            /// and every `xs[r]` the activations for them.
            #[target_feature(enable = $features)]
            unsafe fn one<const N: usize>(
                w: *const u8,
                nb: usize,
                xs: [*const $act; N],
            ) -> [f32; N] {
                $kernel::<$($block,)? $dot, N>(w, nb, xs)
            }

            /// # Safety
            /// As `one`, for the `R` rows of `row_bytes` at `w` and one activation row.
            #[target_feature(enable = $features)]
            unsafe fn many<const R: usize>(
                w: *const u8,
                row_bytes: usize,
                nb: usize,
                x: *const $act,
            ) -> [f32; R] {
                $crate::x86::entry::rows_body!(
                    w, row_bytes, nb, x, one, $($rows::<$rows_block, $dot, R>)?
                )
            }

            /// `out[j * stride + i] = w_j · xs[i]` for the weight rows in `w`. Only
            /// reachable through `kernel`, which checks the CPU features.
            pub(crate) fn rows(
                w: &[u8],
                row_bytes: usize,
                xs: &[&[$act]],
                out: &mut [f32],
                stride: usize,
            ) {
                let nb = row_bytes / $block_bytes;
                let n = if nb == 0 { 0 } else { w.len() / row_bytes };
                let m = xs.len();
                assert!(
                    nb * $block_bytes == row_bytes
                        && n * row_bytes == w.len()
                        && xs.iter().all(|x| x.len() == $act_len(nb))
                        && m <= stride
                        && (n == 0 || (n - 1) * stride + m <= out.len()),
                    "qwen2-quant internal error: kernel called with mismatched lengths"
                );
                let row = |j: usize, count: usize| w[j * row_bytes..][..count * row_bytes].as_ptr();
                // SAFETY (every call below): the lengths are checked above, and `kernel`
                // checked the CPU features before handing out this fn.
                if m == 1 {
                    let x = xs[0].as_ptr();
                    let mut j = 0;
                    while j + DECODE_ROWS <= n {
                        let sums = unsafe {
                            many::<DECODE_ROWS>(row(j, DECODE_ROWS), row_bytes, nb, x)
                        };
                        for (k, sum) in sums.into_iter().enumerate() {
                            out[(j + k) * stride] = sum;
                        }
                        j += DECODE_ROWS;
                    }
                    for j in j..n {
                        [out[j * stride]] = unsafe { many::<1>(row(j, 1), row_bytes, nb, x) };
                    }
                    return;
                }
                for j in 0..n {
                    let out = &mut out[j * stride..j * stride + m];
                    let mut outs = out.chunks_exact_mut(4);
                    let mut groups = xs.chunks_exact(4);
                    for (group, out4) in (&mut groups).zip(&mut outs) {
                        let group = std::array::from_fn(|i| group[i].as_ptr());
                        out4.copy_from_slice(&unsafe { one::<4>(row(j, 1), nb, group) });
                    }
                    for (x, o) in groups.remainder().iter().zip(outs.into_remainder()) {
                        [*o] = unsafe { one::<1>(row(j, 1), nb, [x.as_ptr()]) };
                    }
                }
            }
        }
    };
}
pub(crate) use variant;

/// The body of the `R`-row decode entry points: a kernel of its own (`k::<B, E, R>(w,
/// row_bytes, nb, x)`), or the one-row entry point per row.
macro_rules! rows_body {
    ($w:ident, $row_bytes:ident, $nb:ident, $x:ident, $one:ident, $kernel:path) => {
        $kernel($w, $row_bytes, $nb, $x)
    };
    ($w:ident, $row_bytes:ident, $nb:ident, $x:ident, $one:ident,) => {{
        let mut sums = [0f32; R];
        for j in 0..R {
            [sums[j]] = $one::<1>($w.add(j * $row_bytes), $nb, [$x]);
        }
        sums
    }};
}
pub(crate) use rows_body;
