//! `matmul` over m activation rows gives exactly (bit for bit) the m `matvec` results on the
//! same path, and bad shapes are errors, not panics.

mod common;

use common::*;
use qwen2_quant::{available_paths, dot_rows, GgmlType, KernelPath, QuantError, QuantMatrix};

#[test]
fn matmul_equals_matvecs_exactly() {
    let mut rng = Rng::new(200);
    for ty in TYPES {
        let cols = ty.block_size() * 3;
        // 150 rows: several parallel chunks and a remainder; m covers groups of 4 + remainders.
        let matrix = test_matrix(ty, 150, cols, &mut rng);
        for m in [1, 3, 4, 5, 9, 17] {
            let x = rng.activations(m * cols);
            for path in available_paths() {
                let mut batched = vec![0f32; m * matrix.rows()];
                matrix.matmul_with_path(path, &x, m, &mut batched).unwrap();
                for i in 0..m {
                    let mut single = vec![0f32; matrix.rows()];
                    matrix
                        .matvec_with_path(path, &x[i * cols..(i + 1) * cols], &mut single)
                        .unwrap();
                    let got = &batched[i * matrix.rows()..(i + 1) * matrix.rows()];
                    assert!(
                        got.iter()
                            .zip(&single)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty} {path} m {m} row {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn large_matrices_use_the_parallel_path_identically() {
    // Over the decode parallel threshold (256 KB): the result must not depend on the chunking,
    // nor on whether the product is shared between threads.
    let mut rng = Rng::new(201);
    for (ty, rows, cols) in [
        (GgmlType::Q4_K, 2000, 512),
        (GgmlType::Q5_0, 2000, 224),
        (GgmlType::Q8_0, 1001, 288),
    ] {
        let matrix = test_matrix(ty, rows, cols, &mut rng);
        assert!(matrix.data().len() > 256 * 1024);
        let x = rng.activations(2 * cols);
        for path in available_paths() {
            let mut batched = vec![0f32; 2 * rows];
            matrix.matmul_with_path(path, &x, 2, &mut batched).unwrap();
            let mut single = vec![0f32; rows];
            matrix
                .matvec_with_path(path, &x[cols..], &mut single)
                .unwrap();
            assert_eq!(&batched[rows..], &single[..], "{ty} {path}");
            let act = matrix.quantize_activations(&x[cols..], 1).unwrap();
            for r in [0, 17, rows - 1] {
                let mut one = [0f32];
                dot_rows(
                    path,
                    ty,
                    &matrix.data()[r * matrix.row_bytes()..(r + 1) * matrix.row_bytes()],
                    &act,
                    &mut one,
                )
                .unwrap();
                assert_eq!(
                    one[0].to_bits(),
                    single[r].to_bits(),
                    "{ty} {path} dot_rows"
                );
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let mut rng = Rng::new(202);
    let matrix = test_matrix(GgmlType::Q8_0, 4, 64, &mut rng);
    let mut y = vec![0f32; 4];
    assert!(matches!(
        matrix.matvec(&[0.0; 63], &mut y),
        Err(QuantError::Shape(_))
    ));
    assert!(matches!(
        matrix.matvec(&[0.0; 64], &mut [0.0; 3]),
        Err(QuantError::Shape(_))
    ));
    assert!(matches!(
        matrix.matmul(&[0.0; 128], 3, &mut [0.0; 12]),
        Err(QuantError::Shape(_))
    ));
    assert!(matrix.matmul(&[0.0; 0], 0, &mut []).is_ok());
    assert!(matches!(
        QuantMatrix::new(GgmlType::Q8_0, 4, 64, vec![0u8; 10]),
        Err(QuantError::Shape(_))
    ));
    assert!(matches!(
        QuantMatrix::new(GgmlType::Q4_K, 1, 128, vec![0u8; 72]),
        Err(QuantError::Shape(_))
    ));
    assert!(matches!(
        QuantMatrix::new(GgmlType::F16, 1, 2, vec![0u8; 4]),
        Err(QuantError::UnsupportedType(GgmlType::F16))
    ));
    assert!(QuantMatrix::from_f32(GgmlType::Q5_K, 1, 256, &[0.0; 256]).is_err());
    // Activations quantized for another format are rejected.
    let other = test_matrix(GgmlType::Q4_1, 4, 64, &mut rng);
    let act = other.quantize_activations(&[0.5; 64], 1).unwrap();
    assert!(matrix
        .matmul_quantized(KernelPath::Portable, &act, &mut y)
        .is_err());
    for path in KernelPath::ALL {
        if !path.is_available() {
            assert!(matches!(
                matrix.matvec_with_path(path, &[0.0; 64], &mut y),
                Err(QuantError::PathUnavailable(_))
            ));
        }
    }
}

#[test]
fn shared_and_borrowed_buffers_work() {
    use std::sync::Arc;
    let mut rng = Rng::new(203);
    let matrix = test_matrix(GgmlType::Q6_K, 3, 256, &mut rng);
    // The matrix inside a larger buffer (as a tensor inside a memory-mapped GGUF file).
    let mut file = vec![0xAAu8; 100];
    file.extend_from_slice(matrix.data());
    file.extend_from_slice(&[0x55; 7]);
    let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(file);
    let range = 100..100 + matrix.data().len();
    let bytes = qwen2_quant::WeightBytes::new(owner.clone(), range).unwrap();
    let shared = QuantMatrix::new(GgmlType::Q6_K, 3, 256, bytes).unwrap();
    let from_arc: Arc<[u8]> = matrix.data().into();
    let from_arc = QuantMatrix::new(GgmlType::Q6_K, 3, 256, from_arc).unwrap();
    let x = rng.activations(256);
    let (mut a, mut b, mut c) = (vec![0f32; 3], vec![0f32; 3], vec![0f32; 3]);
    matrix.matvec(&x, &mut a).unwrap();
    shared.matvec(&x, &mut b).unwrap();
    from_arc.matvec(&x, &mut c).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert!(qwen2_quant::WeightBytes::new(owner, 0..10_000).is_err());
}

/// `n` values spread over [-1, 1] in a fixed scrambled order (multiples of 1/1000).
fn spread_values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

#[test]
fn from_f32_quantizes_rows_in_parallel_to_the_bytes_of_one_whole_call() {
    // 600 rows of 256: three parallel chunks of rows, the last one short.
    let (rows, cols) = (600usize, 256usize);
    let values = spread_values(rows * cols);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let m = QuantMatrix::from_f32(ty, rows, cols, &values).unwrap();
        assert_eq!(m.data(), qwen2_gguf::quantize(ty, &values).unwrap(), "{ty}");
    }
}

#[test]
fn row_blocks_give_the_bytes_of_from_f32_and_a_short_read_is_an_error() {
    let (rows, cols) = (600usize, 256usize);
    let values = spread_values(rows * cols);
    let read = |r: std::ops::Range<usize>, out: &mut Vec<f32>| {
        out.clear();
        out.extend_from_slice(&values[r.start * cols..r.end * cols]);
    };
    // One arena with room for both matrices and a third that does not fit (it gets memory of
    // its own).
    let arena =
        qwen2_quant::WeightArena::for_sizes([rows * cols / 32 * 34, rows * cols / 256 * 144])
            .unwrap();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q8_0] {
        let blocks = QuantMatrix::from_row_blocks(ty, rows, cols, read).unwrap();
        let whole = QuantMatrix::from_f32(ty, rows, cols, &values).unwrap();
        assert_eq!(blocks.data(), whole.data(), "{ty}");
        let in_arena = QuantMatrix::from_row_blocks_in(Some(&arena), ty, rows, cols, read).unwrap();
        assert_eq!(in_arena.data(), whole.data(), "{ty} in an arena");
    }
    assert_eq!(arena.remaining(), 0);
    let short = |r: std::ops::Range<usize>, out: &mut Vec<f32>| {
        read(r, out);
        out.pop();
    };
    let e = QuantMatrix::from_row_blocks(GgmlType::Q8_0, rows, cols, short).unwrap_err();
    assert!(e.to_string().contains("not"), "{e}");
}
