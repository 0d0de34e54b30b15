//! The integer stage of the signed kernels: the offset-corrected dots of unsigned weights
//! (pairs on AVX2 and VNNI, quads on VNNI) equal, block by block and exactly, the sign-trick
//! dot of the signed weights (`dot_i8_i8`, what the kernels did before) and a scalar dot.

use std::arch::x86_64::*;

use super::blocks::{Q4_0Block, Q5_0Block, Q8_0Block};
use super::*;
use crate::activation::{BlockQ8_0, QK8};
use crate::dispatch::KernelPath;
use crate::quads::{quad_rows, quads_per_row, QUAD};
use crate::x86::{dot_i8_i8, Avx2Dot};

/// The signed weights of one block in element order, unpacked as the portable kernels do.
trait Reference: SignedBlock {
    fn signed(block: &[u8]) -> [i8; QK8];
}

impl Reference for Q8_0Block {
    fn signed(block: &[u8]) -> [i8; QK8] {
        std::array::from_fn(|i| block[2 + i] as i8)
    }
}

impl Reference for Q4_0Block {
    fn signed(block: &[u8]) -> [i8; QK8] {
        std::array::from_fn(|i| ((block[2 + i % 16] >> (4 * (i / 16))) & 0x0F) as i8 - 8)
    }
}

impl Reference for Q5_0Block {
    fn signed(block: &[u8]) -> [i8; QK8] {
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        std::array::from_fn(|i| {
            let nibble = (block[6 + i % 16] >> (4 * (i / 16))) & 0x0F;
            (nibble | (((qh >> i) & 1) as u8) << 4) as i8 - 16
        })
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sums of i32 lanes in groups of four.
fn group_sums<const L: usize>(lanes: [i32; L]) -> Vec<i32> {
    lanes.chunks(4).map(|g| g.iter().sum()).collect()
}

#[target_feature(enable = "avx2")]
unsafe fn sign_trick_avx2(w: &[i8; QK8], x: &[i8; QK8]) -> i32 {
    let v = dot_i8_i8::<Avx2Dot>(
        _mm256_setzero_si256(),
        _mm256_loadu_si256(w.as_ptr().cast()),
        _mm256_loadu_si256(x.as_ptr().cast()),
    );
    std::mem::transmute::<__m256i, [i32; 8]>(v).iter().sum()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_avx2<B: SignedBlock>(w: *const u8, x: &Q8_0Quad, half: usize) -> [i32; 8] {
    let (low, high) = B::unpack_pair::<Avx2Dot>(w);
    std::mem::transmute(pairs::pair_dot::<B, Avx2Dot>(low, high, x, half))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn sign_trick_vnni(w: &[i8; QK8], x: &[i8; QK8]) -> i32 {
    let v = dot_i8_i8::<VnniDot>(
        _mm256_setzero_si256(),
        _mm256_loadu_si256(w.as_ptr().cast()),
        _mm256_loadu_si256(x.as_ptr().cast()),
    );
    std::mem::transmute::<__m256i, [i32; 8]>(v).iter().sum()
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn pair_vnni<B: SignedBlock>(w: *const u8, x: &Q8_0Quad, half: usize) -> [i32; 8] {
    let (low, high) = B::unpack_pair::<VnniDot>(w);
    std::mem::transmute(pairs::pair_dot::<B, VnniDot>(low, high, x, half))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn quad_vnni<B: SignedBlock>(w: *const u8, x: &Q8_0Quad) -> [i32; 16] {
    let (low, high, _) = quads::unpack_unsigned::<B>(w);
    std::mem::transmute(quads::quad_dot::<B>(low, high, x))
}

/// Four weight blocks and four activation blocks: random, or at the extremes of both ranges.
fn case(rng: &mut Rng, bytes: usize, case: usize) -> (Vec<u8>, Vec<BlockQ8_0>) {
    let mut w: Vec<u8> = (0..QUAD * bytes).map(|_| rng.next() as u8).collect();
    let mut x: Vec<BlockQ8_0> = (0..QUAD)
        .map(|_| BlockQ8_0 {
            d: half::f16::ONE,
            qs: std::array::from_fn(|_| ((rng.next() % 255) as i32 - 127) as i8),
        })
        .collect();
    match case % 4 {
        0 => {}
        // Every weight bit set (Q8_0: −1; Q4_0/Q5_0: the largest value) times ±127.
        1 => w.fill(0xFF),
        // Every weight bit clear (the smallest Q4_0/Q5_0 value), Q8_0 weights at −128.
        2 => {
            w.fill(0);
            if bytes == 34 {
                for block in w.chunks_exact_mut(bytes) {
                    block[2..].fill(0x80);
                }
            }
        }
        _ => {}
    }
    if !case.is_multiple_of(4) {
        let sign = if case % 8 < 4 { 127 } else { -127 };
        for block in &mut x {
            block.qs = std::array::from_fn(|i| {
                if case % 4 == 3 && i % 2 == 1 {
                    -sign
                } else {
                    sign
                }
            });
        }
    }
    (w, x)
}

fn check<B: Reference>() {
    let have_avx2 = KernelPath::Avx2.is_available();
    // The helpers below are compiled with VBMI enabled (the quad unpacking needs it), so they
    // run only where the CPU has it; the VNNI kernels without VBMI are checked against
    // portable in `every_variant_matches_portable`.
    let have_vnni = KernelPath::Avx512Vnni.is_available() && crate::dispatch::has_avx512_vbmi();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for n in 0..400 {
        let (w, x) = case(&mut rng, B::BYTES, n);
        let quad = quad_rows(&x, QUAD)[0];
        let signed: Vec<[i8; QK8]> = w.chunks_exact(B::BYTES).map(B::signed).collect();
        let scalar: Vec<i32> = signed
            .iter()
            .zip(&x)
            .map(|(w, x)| {
                w.iter()
                    .zip(&x.qs)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum()
            })
            .collect();
        // SAFETY (all calls): the features are checked; `w` holds four blocks.
        if have_avx2 {
            let sign_trick: Vec<i32> = (0..QUAD)
                .map(|k| unsafe { sign_trick_avx2(&signed[k], &x[k].qs) })
                .collect();
            assert_eq!(sign_trick, scalar, "case {n}");
            let mut pairs = group_sums(unsafe { pair_avx2::<B>(w.as_ptr(), &quad, 0) });
            pairs.extend(group_sums(unsafe {
                pair_avx2::<B>(w[2 * B::BYTES..].as_ptr(), &quad, 1)
            }));
            assert_eq!(pairs, scalar, "avx2 pairs, case {n}");
        }
        if have_vnni {
            let sign_trick: Vec<i32> = (0..QUAD)
                .map(|k| unsafe { sign_trick_vnni(&signed[k], &x[k].qs) })
                .collect();
            assert_eq!(sign_trick, scalar, "case {n}");
            let mut pairs = group_sums(unsafe { pair_vnni::<B>(w.as_ptr(), &quad, 0) });
            pairs.extend(group_sums(unsafe {
                pair_vnni::<B>(w[2 * B::BYTES..].as_ptr(), &quad, 1)
            }));
            assert_eq!(pairs, scalar, "vnni pairs, case {n}");
            let quads = group_sums(unsafe { quad_vnni::<B>(w.as_ptr(), &quad) });
            assert_eq!(quads, scalar, "vnni quads, case {n}");
        }
    }
}

#[test]
fn q8_0_offset_corrected_dots_equal_the_sign_trick() {
    check::<Q8_0Block>();
}

#[test]
fn q4_0_offset_corrected_dots_equal_the_sign_trick() {
    check::<Q4_0Block>();
}

#[test]
fn q5_0_offset_corrected_dots_equal_the_sign_trick() {
    check::<Q5_0Block>();
}

/// Every variant of a type's kernel this CPU can run (`avx2`, `vnni`, `vbmi`) against the
/// portable dot, for decode (one activation row, rows in groups of four and single) and for
/// several activation rows; and within a variant, decode equals the batched result exactly.
fn check_variants(
    ty: qwen2_gguf::GgmlType,
    kernels: &[(&str, bool, crate::kernels::RowsFn<Q8_0Quad>)],
) {
    let portable = match ty {
        qwen2_gguf::GgmlType::Q8_0 => crate::portable::dot_q8_0,
        qwen2_gguf::GgmlType::Q4_0 => crate::portable::dot_q4_0,
        _ => crate::portable::dot_q5_0,
    };
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for nb in [1, 2, 3, 5, 7, 28] {
        let (rows, m) = (7, 5);
        let row_bytes = nb * ty.type_size();
        let mut w: Vec<u8> = (0..rows * row_bytes).map(|_| rng.next() as u8).collect();
        for block in w.chunks_exact_mut(ty.type_size()) {
            let d = half::f16::from_f32(0.001 + (rng.next() % 100) as f32 * 1e-4);
            block[..2].copy_from_slice(&d.to_le_bytes());
        }
        let x: Vec<f32> = (0..m * nb * QK8)
            .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let blocks = crate::activation::quantize_q8_0(&x).unwrap();
        let quads = quad_rows(&blocks, nb);
        let act_rows: Vec<&[Q8_0Quad]> = quads.chunks(quads_per_row(nb)).collect();
        let weights = qwen2_gguf::dequantize(ty, &w).unwrap();
        for &(name, available, kernel) in kernels {
            if !available {
                continue;
            }
            let mut batched = vec![0f32; rows * m];
            kernel(&w, row_bytes, &act_rows, &mut batched, m);
            for i in 0..m {
                let mut single = vec![0f32; rows];
                kernel(&w, row_bytes, &act_rows[i..i + 1], &mut single, 1);
                let act = &blocks[i * nb..(i + 1) * nb];
                for r in 0..rows {
                    let got = batched[r * m + i];
                    assert_eq!(got.to_bits(), single[r].to_bits(), "{ty} {name} nb {nb}");
                    let expected = portable(&w[r * row_bytes..(r + 1) * row_bytes], act);
                    let magnitude: f32 = weights[r * nb * QK8..(r + 1) * nb * QK8]
                        .iter()
                        .zip(
                            act.iter()
                                .flat_map(|b| b.qs.map(|q| b.d.to_f32() * f32::from(q))),
                        )
                        .map(|(w, x)| (w * x).abs())
                        .sum();
                    assert!(
                        (got - expected).abs() <= 1e-5 * magnitude + 1e-30,
                        "{ty} {name} nb {nb} row {r}: {got} vs portable {expected}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_variant_matches_portable() {
    use crate::dispatch::has_avx512_vbmi;
    let avx2 = KernelPath::Avx2.is_available();
    let vnni = KernelPath::Avx512Vnni.is_available();
    let vbmi = vnni && has_avx512_vbmi();
    check_variants(
        qwen2_gguf::GgmlType::Q8_0,
        &[
            ("avx2", avx2, super::q8_0::avx2::rows),
            ("vnni", vnni, super::q8_0::vnni::rows),
        ],
    );
    check_variants(
        qwen2_gguf::GgmlType::Q4_0,
        &[
            ("avx2", avx2, super::q4_0::avx2::rows),
            ("vnni", vnni, super::q4_0::vnni::rows),
            ("vbmi", vbmi, super::q4_0::vbmi::rows),
        ],
    );
    check_variants(
        qwen2_gguf::GgmlType::Q5_0,
        &[
            ("avx2", avx2, super::q5_0::avx2::rows),
            ("vnni", vnni, super::q5_0::vnni::rows),
            ("vbmi", vbmi, super::q5_0::vbmi::rows),
        ],
    );
}
