//! Query results as the API's JSON, and as the CLI's formats.

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::util::pretty::pretty_format_batches;
use serde_json::Value;

use crate::sql::QueryOutput;
use crate::{Error, Result};

/// `{columns, rows}`: rows as arrays of JSON values, in column order.
pub fn to_json_rows(output: &QueryOutput) -> Result<Vec<Vec<Value>>> {
    let mut rows = Vec::new();
    for batch in &output.batches {
        rows.extend(batch_to_json_rows(batch)?);
    }
    Ok(rows)
}

/// One batch's rows as arrays of JSON values, in column order.
pub fn batch_to_json_rows(batch: &RecordBatch) -> Result<Vec<Vec<Value>>> {
    let mut buffer = Vec::new();
    let mut writer = deltalake::arrow::json::ArrayWriter::new(&mut buffer);
    writer.write(batch).map_err(|error| Error::Query(error.to_string()))?;
    writer.finish().map_err(|error| Error::Query(error.to_string()))?;
    if buffer.is_empty() {
        return Ok(Vec::new());
    }
    let objects: Vec<serde_json::Map<String, Value>> = serde_json::from_slice(&buffer).map_err(|error| Error::Query(error.to_string()))?;
    let names: Vec<String> = batch.schema().fields().iter().map(|field| field.name().clone()).collect();
    Ok(objects.into_iter().map(|object| names.iter().map(|name| object.get(name).cloned().unwrap_or(Value::Null)).collect()).collect())
}

/// The output formats of `confab sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "table" => Some(Format::Table),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Renders a result in `format`.
pub fn render(output: &QueryOutput, format: Format) -> Result<Vec<u8>> {
    let failed = |error: &dyn std::fmt::Display| Error::Query(error.to_string());
    let batches: &[RecordBatch] = &output.batches;
    match format {
        Format::Table => Ok(format!("{}\n", pretty_format_batches(batches).map_err(|error| failed(&error))?).into_bytes()),
        Format::Csv => {
            let mut buffer = Vec::new();
            let mut writer = deltalake::arrow::csv::Writer::new(&mut buffer);
            for batch in batches {
                writer.write(batch).map_err(|error| failed(&error))?;
            }
            drop(writer);
            Ok(buffer)
        }
        Format::Json => {
            let mut buffer = Vec::new();
            let mut writer = deltalake::arrow::json::LineDelimitedWriter::new(&mut buffer);
            for batch in batches {
                writer.write(batch).map_err(|error| failed(&error))?;
            }
            writer.finish().map_err(|error| failed(&error))?;
            Ok(buffer)
        }
        Format::Parquet => {
            let mut buffer = Vec::new();
            let schema = match batches.first() {
                Some(batch) => batch.schema(),
                None => return Ok(buffer),
            };
            let mut writer = deltalake::parquet::arrow::ArrowWriter::try_new(&mut buffer, schema, None).map_err(|error| failed(&error))?;
            for batch in batches {
                writer.write(batch).map_err(|error| failed(&error))?;
            }
            writer.close().map_err(|error| failed(&error))?;
            Ok(buffer)
        }
    }
}
