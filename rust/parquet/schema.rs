//! The arrow schema of the packaged files, the parquet writer settings, and the record
//! batches of persona rows.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Float32Array, ListArray, RecordBatch, StringArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use super::read::Row;
use crate::error::{Error, Result};

/// Arrow's list item name as `pyarrow`/`datasets` write it (parquet-compliant nesting).
const ITEM: &str = "element";

/// The arrow schema of every packaged file, with `datasets`' feature metadata so the
/// parquet files alone (without the card) load as `Array2D`.
pub fn arrow_schema(num_layers: usize, hidden_size: usize) -> Schema {
    let features = serde_json::json!({"info": {"features": {
        "persona_id": {"dtype": "string", "_type": "Value"},
        "name": {"dtype": "string", "_type": "Value"},
        // `Sequence` rather than `List`: readable by datasets 2.x as well as 4.x+.
        "sample_ids": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
        "vector": {"shape": [num_layers, hidden_size], "dtype": "float32", "_type": "Array2D"},
    }}});
    Schema::new(vec![
        Field::new("persona_id", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("sample_ids", list_of(DataType::Utf8), true),
        Field::new("vector", list_of(list_of(DataType::Float32)), true),
    ])
    .with_metadata(std::collections::HashMap::from([(
        "huggingface".to_string(),
        features.to_string(),
    )]))
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new(ITEM, item, true)))
}

pub(super) fn writer_properties(rows_per_group: usize) -> WriterProperties {
    let vector_leaf = ColumnPath::new(
        ["vector", "list", ITEM, "list", ITEM]
            .map(String::from)
            .to_vec(),
    );
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        // Data page v2 compresses a page's values in place; v1 first concatenates levels
        // and values, then compresses into a buffer that is reallocated and shrunk: two
        // extra copies of every page, most of the packager's page faults.
        .set_writer_version(WriterVersion::PARQUET_2_0)
        // v2's default for strings would be DELTA_BYTE_ARRAY; ids and names stay plain.
        .set_encoding(Encoding::PLAIN)
        .set_max_row_group_row_count(Some(rows_per_group))
        // Ids and names are unique per row; only sample ids repeat across personas.
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(
            ColumnPath::new(["sample_ids", "list", ITEM].map(String::from).to_vec()),
            true,
        )
        .set_statistics_enabled(EnabledStatistics::Chunk)
        // Min/max of activation values prune nothing and cost a pass over the data.
        .set_column_statistics_enabled(vector_leaf.clone(), EnabledStatistics::None)
        // Byte-stream-split puts the float exponents together, which zstd compresses well.
        .set_column_encoding(vector_leaf, Encoding::BYTE_STREAM_SPLIT)
        .set_created_by(format!("pvrs {} (parquet-rs)", env!("CARGO_PKG_VERSION")))
        .build()
}

pub(super) fn build_batch(
    schema: &Arc<Schema>,
    rows: &[Row],
    dims: (usize, usize),
    values: Vec<f32>,
) -> Result<RecordBatch> {
    let (layers, hidden) = dims;
    let ids = StringArray::from_iter_values(rows.iter().map(|r| r.id.as_str()));
    let names = StringArray::from_iter_values(rows.iter().map(|r| r.name.as_str()));
    let mut samples = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        ITEM,
        DataType::Utf8,
        true,
    )));
    for r in rows {
        for s in r.sample_ids.iter() {
            samples.values().append_value(s);
        }
        samples.append(true);
    }
    let inner_field = Arc::new(Field::new(ITEM, DataType::Float32, true));
    let outer_field = Arc::new(Field::new(ITEM, list_of(DataType::Float32), true));
    // Offsets are i32: a row group must hold fewer than 2^31 values.
    if rows.len() * layers * hidden > i32::MAX as usize {
        return Err(Error::Packaging(format!(
            "a row group of {} personas x ({layers}, {hidden}) values is too large for 32-bit list offsets; lower the row group size",
            rows.len()
        )));
    }
    let inner_offsets =
        OffsetBuffer::from_lengths(std::iter::repeat(hidden).take(rows.len() * layers));
    let outer_offsets = OffsetBuffer::from_lengths(std::iter::repeat(layers).take(rows.len()));
    let inner = ListArray::try_new(
        inner_field,
        inner_offsets,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .map_err(|e| Error::Internal(format!("building the inner vector lists: {e}")))?;
    let outer = ListArray::try_new(outer_field, outer_offsets, Arc::new(inner), None)
        .map_err(|e| Error::Internal(format!("building the vector lists: {e}")))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(names),
        Arc::new(samples.finish()),
        Arc::new(outer),
    ];
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("building a record batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_v2_with_plain_strings_and_split_floats() {
        let props = writer_properties(10);
        assert_eq!(props.writer_version(), WriterVersion::PARQUET_2_0);
        let id = ColumnPath::new(vec!["persona_id".to_string()]);
        assert_eq!(props.encoding(&id), Some(Encoding::PLAIN));
        let leaf = ColumnPath::new(
            ["vector", "list", ITEM, "list", ITEM]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(props.encoding(&leaf), Some(Encoding::BYTE_STREAM_SPLIT));
    }
}
