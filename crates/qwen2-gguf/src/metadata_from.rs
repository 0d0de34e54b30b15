//! Conversions into [`MetadataValue`] and [`MetadataArray`], for building metadata to write.

use crate::metadata::{MetadataArray, MetadataValue};

macro_rules! scalar_and_array_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for MetadataValue {
            fn from(value: $ty) -> Self {
                MetadataValue::$variant(value)
            }
        }
        impl From<Vec<$ty>> for MetadataArray {
            fn from(values: Vec<$ty>) -> Self {
                MetadataArray::$variant(values)
            }
        }
        impl From<Vec<$ty>> for MetadataValue {
            fn from(values: Vec<$ty>) -> Self {
                MetadataValue::Array(MetadataArray::$variant(values))
            }
        }
    )*};
}

scalar_and_array_from!(
    u8 => U8,
    i8 => I8,
    u16 => U16,
    i16 => I16,
    u32 => U32,
    i32 => I32,
    f32 => F32,
    bool => Bool,
    String => String,
    u64 => U64,
    i64 => I64,
    f64 => F64,
);

impl From<&str> for MetadataValue {
    fn from(value: &str) -> Self {
        MetadataValue::String(value.to_string())
    }
}

impl From<Vec<&str>> for MetadataValue {
    fn from(values: Vec<&str>) -> Self {
        MetadataValue::Array(MetadataArray::String(
            values.into_iter().map(str::to_string).collect(),
        ))
    }
}

impl From<MetadataArray> for MetadataValue {
    fn from(array: MetadataArray) -> Self {
        MetadataValue::Array(array)
    }
}

impl From<Vec<MetadataArray>> for MetadataValue {
    fn from(arrays: Vec<MetadataArray>) -> Self {
        MetadataValue::Array(MetadataArray::Array(arrays))
    }
}
