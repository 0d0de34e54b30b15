//! Parsing and validating a GGUF file's header, metadata and tensor infos (GGUF v2 and v3,
//! little-endian). Every count, length, offset and size is checked against the file.

use std::collections::HashMap;
use std::path::Path;

use crate::byte_reader::ByteReader;
use crate::error::{GgufError, Result};
use crate::ggml_type::GgmlType;
use crate::metadata::{MetadataArray, MetadataValue, MetadataValueType};
use crate::metadata_map::Metadata;
use crate::tensor::TensorInfo;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The metadata key holding the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted (protects the stack against crafted files).
const MAX_ARRAY_DEPTH: usize = 16;
/// Fewest bytes of one metadata entry: key length, type, one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// Everything in a GGUF file before the tensor data.
pub(crate) struct ParsedFile {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// Parses and validates `data`, the whole content of the file at `path`.
pub(crate) fn parse_gguf(path: &Path, data: &[u8]) -> Result<ParsedFile> {
    let mut r = ByteReader::new(path, data);
    let version = read_header_version(&mut r)?;
    let tensor_count = r.read_u64("tensor count")?;
    let kv_count = r.read_u64("metadata key/value count")?;
    r.check_count(kv_count, MIN_KV_SIZE, "metadata key/value count")?;

    let mut metadata = Metadata::new(path);
    for index in 0..kv_count {
        let offset = r.pos();
        let key = r.read_string(&format!("key of metadata entry {index}"))?;
        let value = read_kv_value(&mut r, &key)?;
        if !metadata.insert(key.clone(), value) {
            return Err(r.corrupt(format!(
                "duplicate metadata key `{key}` (entry {index} at offset {offset})"
            )));
        }
    }
    let alignment = read_alignment(&metadata)?;

    r.check_count(tensor_count, MIN_TENSOR_INFO_SIZE, "tensor count")?;
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(tensor_count as usize);
    for index in 0..tensor_count as usize {
        let info = read_tensor_info(&mut r, index, alignment)?;
        if let Some(first) = names.insert(info.name().to_string(), index) {
            return Err(r.corrupt(format!(
                "duplicate tensor name `{}` (tensor infos {first} and {index})",
                info.name()
            )));
        }
        tensors.push(info);
    }

    let data_offset = align_up(r.pos() as u64, alignment)
        .ok_or_else(|| r.corrupt("tensor data offset overflows when aligned".to_string()))?;
    check_tensor_ranges(&r, &tensors, data_offset, data.len() as u64)?;
    Ok(ParsedFile {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Reads the magic and the version; rejects version 1 and big-endian files.
fn read_header_version(r: &mut ByteReader<'_>) -> Result<u32> {
    let magic = r.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(r.corrupt(format!(
            "bad magic: expected \"GGUF\" (47 47 55 46), found {:02x} {:02x} {:02x} {:02x}",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    let version = r.read_u32("version")?;
    let unsupported = |detail: String| GgufError::UnsupportedFile {
        path: r.path().to_path_buf(),
        detail,
    };
    match version {
        2 | 3 => Ok(version),
        1 => Err(unsupported(
            "GGUF version 1 (32-bit counts) is not supported; re-convert the model with a \
             current llama.cpp"
                .to_string(),
        )),
        v if matches!(v.swap_bytes(), 1..=3) => Err(unsupported(format!(
            "big-endian GGUF (version field {v:#010x} is version {} byte-swapped) is not \
             supported",
            v.swap_bytes()
        ))),
        v => Err(unsupported(format!(
            "unknown GGUF version {v} (this reader understands versions 2 and 3)"
        ))),
    }
}

/// Reads the type tag and value of metadata key `key`.
fn read_kv_value(r: &mut ByteReader<'_>, key: &str) -> Result<MetadataValue> {
    let offset = r.pos();
    let type_id = r.read_u32(&format!("type of metadata key `{key}`"))?;
    let ty = MetadataValueType::from_id(type_id).ok_or_else(|| {
        r.corrupt(format!(
            "metadata key `{key}`: unknown value type id {type_id} at offset {offset}"
        ))
    })?;
    read_value(r, ty, key)
}

/// Reads one value of type `ty` belonging to key `key`.
fn read_value(r: &mut ByteReader<'_>, ty: MetadataValueType, key: &str) -> Result<MetadataValue> {
    use MetadataValueType as T;
    let what = || format!("value of metadata key `{key}`");
    Ok(match ty {
        T::U8 => MetadataValue::U8(r.read_u8(&what())?),
        T::I8 => MetadataValue::I8(r.read_u8(&what())? as i8),
        T::U16 => MetadataValue::U16(r.read_u16(&what())?),
        T::I16 => MetadataValue::I16(r.read_u16(&what())? as i16),
        T::U32 => MetadataValue::U32(r.read_u32(&what())?),
        T::I32 => MetadataValue::I32(r.read_u32(&what())? as i32),
        T::F32 => MetadataValue::F32(f32::from_bits(r.read_u32(&what())?)),
        T::U64 => MetadataValue::U64(r.read_u64(&what())?),
        T::I64 => MetadataValue::I64(r.read_u64(&what())? as i64),
        T::F64 => MetadataValue::F64(f64::from_bits(r.read_u64(&what())?)),
        T::Bool => MetadataValue::Bool(read_bool(r, key)?),
        T::String => MetadataValue::String(r.read_string(&what())?),
        T::Array => MetadataValue::Array(read_array(r, key, 0)?),
    })
}

fn read_bool(r: &mut ByteReader<'_>, key: &str) -> Result<bool> {
    let offset = r.pos();
    match r.read_u8(&format!("bool value of metadata key `{key}`"))? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(r.corrupt(format!(
            "metadata key `{key}`: bool byte at offset {offset} is {other}, expected 0 or 1"
        ))),
    }
}

/// Reads an array (element type, count, elements) of key `key`, nested `depth` deep.
fn read_array(r: &mut ByteReader<'_>, key: &str, depth: usize) -> Result<MetadataArray> {
    use MetadataValueType as T;
    if depth >= MAX_ARRAY_DEPTH {
        return Err(r.corrupt(format!(
            "metadata key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH} levels at \
             offset {}",
            r.pos()
        )));
    }
    let offset = r.pos();
    let what = format!("array of metadata key `{key}`");
    let type_id = r.read_u32(&what)?;
    let ty = MetadataValueType::from_id(type_id).ok_or_else(|| {
        r.corrupt(format!(
            "metadata key `{key}`: unknown array element type id {type_id} at offset {offset}"
        ))
    })?;
    let count = r.read_u64(&what)?;
    r.check_count(count, ty.min_encoded_size(), &what)?;
    let n = count as usize;
    // Fixed-size elements: one bounds check for the whole array, then decode.
    let mut fixed = |size: u64| r.take(count * size, &what);
    Ok(match ty {
        T::U8 => MetadataArray::U8(fixed(1)?.to_vec()),
        T::I8 => MetadataArray::I8(fixed(1)?.iter().map(|&b| b as i8).collect()),
        T::U16 => MetadataArray::U16(le_chunks(fixed(2)?, u16::from_le_bytes)),
        T::I16 => MetadataArray::I16(le_chunks(fixed(2)?, i16::from_le_bytes)),
        T::U32 => MetadataArray::U32(le_chunks(fixed(4)?, u32::from_le_bytes)),
        T::I32 => MetadataArray::I32(le_chunks(fixed(4)?, i32::from_le_bytes)),
        T::F32 => MetadataArray::F32(le_chunks(fixed(4)?, f32::from_le_bytes)),
        T::U64 => MetadataArray::U64(le_chunks(fixed(8)?, u64::from_le_bytes)),
        T::I64 => MetadataArray::I64(le_chunks(fixed(8)?, i64::from_le_bytes)),
        T::F64 => MetadataArray::F64(le_chunks(fixed(8)?, f64::from_le_bytes)),
        T::Bool => {
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                values.push(read_bool(r, key)?);
            }
            MetadataArray::Bool(values)
        }
        T::String => {
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                values.push(r.read_string(&what)?);
            }
            MetadataArray::String(values)
        }
        T::Array => {
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                values.push(read_array(r, key, depth + 1)?);
            }
            MetadataArray::Array(values)
        }
    })
}

/// Decodes little-endian fixed-size values (`bytes.len()` is a multiple of `N`).
fn le_chunks<const N: usize, T>(bytes: &[u8], decode: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut array = [0u8; N];
            array.copy_from_slice(chunk);
            decode(array)
        })
        .collect()
}

/// `general.alignment`, or the default: a non-zero power of two.
fn read_alignment(metadata: &Metadata) -> Result<u64> {
    let Some(value) = metadata.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let alignment = metadata.get_u32(ALIGNMENT_KEY)?;
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(GgufError::corrupt(
            metadata.path(),
            format!(
                "metadata key `{ALIGNMENT_KEY}` is {}, expected a non-zero power of two",
                value.describe()
            ),
        ));
    }
    Ok(u64::from(alignment))
}

/// Reads and validates tensor info number `index`.
fn read_tensor_info(r: &mut ByteReader<'_>, index: usize, alignment: u64) -> Result<TensorInfo> {
    let offset_of_info = r.pos();
    let name = r.read_string(&format!("name of tensor info {index}"))?;
    let what = format!("tensor info of `{name}`");
    let n_dims = r.read_u32(&what)?;
    if n_dims > MAX_DIMS {
        return Err(r.corrupt(format!(
            "tensor `{name}` (info at offset {offset_of_info}): n_dims is {n_dims}, at most \
             {MAX_DIMS} allowed"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.read_u64(&what)?);
    }
    let type_id = r.read_u32(&what)?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnsupportedFile {
        path: r.path().to_path_buf(),
        detail: format!("tensor `{name}` has ggml type id {type_id}, unknown to this reader"),
    })?;
    let offset = r.read_u64(&what)?;
    let info =
        TensorInfo::new(name, ggml_type, dims, offset).map_err(|detail| r.corrupt(detail))?;
    if !offset.is_multiple_of(alignment) {
        return Err(r.corrupt(format!(
            "tensor `{}`: data offset {offset} is not a multiple of the alignment {alignment}",
            info.name()
        )));
    }
    Ok(info)
}

/// Checks every tensor's bytes lie inside the file and no two tensors overlap.
fn check_tensor_ranges(
    r: &ByteReader<'_>,
    tensors: &[TensorInfo],
    data_offset: u64,
    file_len: u64,
) -> Result<()> {
    for t in tensors {
        let end = data_offset
            .checked_add(t.offset())
            .and_then(|start| start.checked_add(t.n_bytes()));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(r.corrupt(format!(
                    "tensor `{}` ({} {:?}, {} bytes) at data offset {} (file offset {}) ends \
                     past the end of the file ({file_len} bytes)",
                    t.name(),
                    t.ggml_type(),
                    t.dims(),
                    t.n_bytes(),
                    t.offset(),
                    u128::from(data_offset) + u128::from(t.offset()),
                )))
            }
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes() > 0).collect();
    by_offset.sort_by_key(|t| t.offset());
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.offset() + a.n_bytes() > b.offset() {
            return Err(r.corrupt(format!(
                "tensors `{}` (data bytes {}..{}) and `{}` (data bytes {}..{}) overlap",
                a.name(),
                a.offset(),
                a.offset() + a.n_bytes(),
                b.name(),
                b.offset(),
                b.offset() + b.n_bytes()
            )));
        }
    }
    Ok(())
}

/// `value` rounded up to a multiple of `alignment` (a power of two), or `None` on overflow.
pub(crate) fn align_up(value: u64, alignment: u64) -> Option<u64> {
    Some(value.checked_add(alignment - 1)? & !(alignment - 1))
}
