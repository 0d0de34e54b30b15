//! Moving burn-flex tensors to and from plain f32 buffers without burn's per-element casts.

use burn::prelude::Tensor;
use burn::tensor::{FloatDType, TensorData};
use burn_flex::{Flex, FlexTensor};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::gemv::Weight;

/// Elements per parallel conversion task.
const CHUNK: usize = 1 << 15;

/// `f` over matching chunks of `a` (`chunk_a` elements) and `b` (`chunk_b`): on the rayon pool
/// when there is more than one chunk, else on the calling thread (handing a single chunk to
/// the pool costs a wake-up and a wait, ~10 µs, which a decode step pays dozens of times).
pub fn zip_chunks<A: Send, B: Sync>(
    a: &mut [A],
    b: &[B],
    chunk_a: usize,
    chunk_b: usize,
    f: impl Fn(&mut [A], &[B]) + Sync + Send,
) {
    let (chunk_a, chunk_b) = (chunk_a.max(1), chunk_b.max(1));
    if a.len() <= chunk_a {
        f(a, b);
    } else {
        a.par_chunks_mut(chunk_a)
            .zip(b.par_chunks(chunk_b))
            .for_each(|(a, b)| f(a, b));
    }
}

/// `f` over chunks of `chunk` elements of `a`: on the pool when there is more than one chunk,
/// else on the calling thread (see [`zip_chunks`]).
pub fn for_chunks<A: Send>(a: &mut [A], chunk: usize, f: impl Fn(&mut [A]) + Sync + Send) {
    let chunk = chunk.max(1);
    if a.len() <= chunk {
        f(a);
    } else {
        a.par_chunks_mut(chunk).for_each(f);
    }
}

/// The primitive behind a tensor (shares its storage).
pub fn primitive<const D: usize>(t: &Tensor<Flex, D>) -> FlexTensor {
    t.clone().into_primitive().tensor()
}

/// The tensor's elements as a row-major f32 vector (exact for every float dtype).
pub fn to_f32<const D: usize>(t: &Tensor<Flex, D>) -> Vec<f32> {
    let p = primitive(t);
    if let Some(s) = p.as_slice::<f32>() {
        return s.to_vec();
    }
    if let Some(s) = p.as_slice::<bf16>() {
        let mut out = vec![0.0f32; s.len()];
        zip_chunks(&mut out, s, CHUNK, CHUNK, |o, s| {
            for (o, s) in o.iter_mut().zip(s) {
                *o = s.f32();
            }
        });
        return out;
    }
    t.clone()
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .expect("a tensor cast to f32 holds f32 data")
}

/// Rounds to the nearest bf16 (ties to even), as f32; NaN stays NaN. Branch-free, so loops
/// over it vectorize.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    if x.is_nan() {
        x
    } else {
        f32::from_bits(rounded)
    }
}

/// Rounding of an f32 to a float dtype and back: the value a tensor of that dtype holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// No rounding.
    F32,
    /// To bf16.
    Bf16,
    /// To f16.
    F16,
}

impl Round {
    /// The rounding for `dtype`, if the kernels handle it.
    pub fn of(dtype: FloatDType) -> Option<Round> {
        match dtype {
            FloatDType::F32 => Some(Round::F32),
            FloatDType::BF16 => Some(Round::Bf16),
            FloatDType::F16 => Some(Round::F16),
            _ => None,
        }
    }

    /// `x` as the dtype holds it.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Round::F32 => x,
            Round::Bf16 => round_bf16(x),
            Round::F16 => f16::from_f32(x).to_f32(),
        }
    }
}

/// A tensor of `dtype` from f32 values (rounded to `dtype` here, to nearest even).
pub fn from_f32(values: Vec<f32>, shape: [usize; 2], dtype: FloatDType) -> Tensor<Flex, 2> {
    let device = Default::default();
    match dtype {
        FloatDType::BF16 => {
            let mut out = vec![bf16::ZERO; values.len()];
            zip_chunks(&mut out, &values, CHUNK, CHUNK, |o, v| {
                for (o, &v) in o.iter_mut().zip(v) {
                    *o = bf16::from_bits((round_bf16(v).to_bits() >> 16) as u16);
                }
            });
            Tensor::from_data(TensorData::new(out, shape), (&device, dtype.into()))
        }
        FloatDType::F32 => Tensor::from_data(
            TensorData::new(values, shape),
            (&device, FloatDType::F32.into()),
        ),
        other => Tensor::<Flex, 2>::from_data(
            TensorData::new(values, shape),
            (&device, FloatDType::F32.into()),
        )
        .cast(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
        ];
        let ramp = (0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)));
        for x in specials.into_iter().chain(ramp).filter(|x| !x.is_nan()) {
            assert_eq!(
                round_bf16(x).to_bits(),
                bf16::from_f32(x).to_f32().to_bits(),
                "{x:e}"
            );
        }
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn conversions_round_trip_every_float_dtype() {
        let values: Vec<f32> = (0..300).map(|i| i as f32 * 0.37 - 50.0).collect();
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            let t = from_f32(values.clone(), [3, 100], dtype);
            assert_eq!(t.dtype(), dtype.into());
            let back = to_f32(&t);
            let round = Round::of(dtype).unwrap();
            for (b, v) in back.iter().zip(&values) {
                assert_eq!(*b, round.apply(*v), "{dtype:?}");
            }
        }
    }
}
