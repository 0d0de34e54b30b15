//! GGUF metadata values: the value types, scalar values and typed arrays (the key→value map
//! with typed getters is [`crate::Metadata`]).

/// The type tag of a GGUF metadata value (`gguf_type` in gguf.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MetadataValueType {
    /// `u8`.
    U8 = 0,
    /// `i8`.
    I8 = 1,
    /// `u16`.
    U16 = 2,
    /// `i16`.
    I16 = 3,
    /// `u32`.
    U32 = 4,
    /// `i32`.
    I32 = 5,
    /// `f32`.
    F32 = 6,
    /// A byte that is 0 or 1.
    Bool = 7,
    /// A UTF-8 string with a `u64` length prefix.
    String = 8,
    /// An array: element type, `u64` count, elements.
    Array = 9,
    /// `u64`.
    U64 = 10,
    /// `i64`.
    I64 = 11,
    /// `f64`.
    F64 = 12,
}

impl MetadataValueType {
    /// The type with on-disk id `id`, if any.
    pub fn from_id(id: u32) -> Option<Self> {
        use MetadataValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// A short name, e.g. `u32`, `string`.
    pub fn name(self) -> &'static str {
        use MetadataValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes on disk (strings and arrays: their
    /// headers). Used to reject counts the rest of the file cannot hold before allocating.
    pub fn min_encoded_size(self) -> u64 {
        use MetadataValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A string.
    String(String),
    /// An array (possibly of arrays).
    Array(MetadataArray),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

/// A metadata array, stored typed (one `Vec` of the element type) so that large arrays such as
/// a tokenizer's scores cost no more than their data.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    /// Array of `u8`.
    U8(Vec<u8>),
    /// Array of `i8`.
    I8(Vec<i8>),
    /// Array of `u16`.
    U16(Vec<u16>),
    /// Array of `i16`.
    I16(Vec<i16>),
    /// Array of `u32`.
    U32(Vec<u32>),
    /// Array of `i32`.
    I32(Vec<i32>),
    /// Array of `f32`.
    F32(Vec<f32>),
    /// Array of `bool`.
    Bool(Vec<bool>),
    /// Array of strings.
    String(Vec<String>),
    /// Array of arrays (each with its own element type).
    Array(Vec<MetadataArray>),
    /// Array of `u64`.
    U64(Vec<u64>),
    /// Array of `i64`.
    I64(Vec<i64>),
    /// Array of `f64`.
    F64(Vec<f64>),
}

impl MetadataArray {
    /// The element type.
    pub fn element_type(&self) -> MetadataValueType {
        use MetadataArray as A;
        use MetadataValueType as T;
        match self {
            A::U8(_) => T::U8,
            A::I8(_) => T::I8,
            A::U16(_) => T::U16,
            A::I16(_) => T::I16,
            A::U32(_) => T::U32,
            A::I32(_) => T::I32,
            A::F32(_) => T::F32,
            A::Bool(_) => T::Bool,
            A::String(_) => T::String,
            A::Array(_) => T::Array,
            A::U64(_) => T::U64,
            A::I64(_) => T::I64,
            A::F64(_) => T::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        use MetadataArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::F32(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `i64`, if the element type is an integer type and every value fits.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        use MetadataArray as A;
        Some(match self {
            A::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            A::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            A::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            A::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            A::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            A::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            A::I64(v) => v.clone(),
            A::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<_>>()?,
            _ => return None,
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("an array of {} {}", self.len(), self.element_type().name())
    }
}

impl MetadataValue {
    /// The value's type tag.
    pub fn value_type(&self) -> MetadataValueType {
        use MetadataValue as V;
        use MetadataValueType as T;
        match self {
            V::U8(_) => T::U8,
            V::I8(_) => T::I8,
            V::U16(_) => T::U16,
            V::I16(_) => T::I16,
            V::U32(_) => T::U32,
            V::I32(_) => T::I32,
            V::F32(_) => T::F32,
            V::Bool(_) => T::Bool,
            V::String(_) => T::String,
            V::Array(_) => T::Array,
            V::U64(_) => T::U64,
            V::I64(_) => T::I64,
            V::F64(_) => T::F64,
        }
    }

    /// The value as a wide signed integer, for any integer type (`u64` above `i64::MAX`
    /// gives `None`).
    pub fn as_i128(&self) -> Option<i128> {
        use MetadataValue as V;
        Some(match *self {
            V::U8(x) => x.into(),
            V::I8(x) => x.into(),
            V::U16(x) => x.into(),
            V::I16(x) => x.into(),
            V::U32(x) => x.into(),
            V::I32(x) => x.into(),
            V::U64(x) => x.into(),
            V::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// The value as `f64`, for `f32` and `f64` values.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(x) => Some(f64::from(x)),
            MetadataValue::F64(x) => Some(x),
            _ => None,
        }
    }

    /// The string, for string values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, for array values.
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A description for error messages: the type and, for scalars, the value.
    pub fn describe(&self) -> String {
        use MetadataValue as V;
        let name = self.value_type().name();
        match self {
            V::String(s) if s.len() > 60 => format!("a string ({} bytes)", s.len()),
            V::String(s) => format!("string {s:?}"),
            V::Array(a) => a.describe(),
            V::Bool(b) => format!("bool {b}"),
            V::F32(x) => format!("{name} {x}"),
            V::F64(x) => format!("{name} {x}"),
            other => match other.as_i128() {
                Some(x) => format!("{name} {x}"),
                None => name.to_string(),
            },
        }
    }
}
