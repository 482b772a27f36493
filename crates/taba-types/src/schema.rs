//! JSON Schemas (feature `schema`) of the types that serialize as strings of
//! their own syntax: sizes, durations, port ranges. Every other type derives
//! its schema beside its serde attributes, so the server's OpenAPI document
//! is the types themselves.

use schemars::gen::SchemaGenerator;
use schemars::schema::{InstanceType, Metadata, Schema, SchemaObject, StringValidation};
use schemars::JsonSchema;

fn string(pattern: &str, description: &str, example: &str) -> SchemaObject {
    SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        string: Some(Box::new(StringValidation {
            pattern: Some(pattern.to_owned()),
            ..Default::default()
        })),
        metadata: Some(Box::new(Metadata {
            description: Some(description.to_owned()),
            ..Default::default()
        })),
        // OpenAPI 3.0 names one `example` (JSON Schema's `examples` is 3.1).
        extensions: [("example".to_owned(), example.into())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A string, or (in requests) an unsigned integer read in `unit`.
fn string_or_count(s: SchemaObject, gen: &mut SchemaGenerator) -> Schema {
    let mut count = gen.subschema_for::<u64>().into_object();
    count.metadata().description = s.metadata.as_ref().and_then(|m| m.description.clone());
    Schema::Object(SchemaObject {
        subschemas: Some(Box::new(schemars::schema::SubschemaValidation {
            any_of: Some(vec![Schema::Object(s), Schema::Object(count)]),
            ..Default::default()
        })),
        ..Default::default()
    })
}

impl JsonSchema for crate::ByteSize {
    fn schema_name() -> String {
        "ByteSize".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        let s = string(
            r"^[0-9]{1,12}(B|KiB|MiB|GiB|TiB|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?$",
            "a size: \"64MiB\", \"1GiB\" (replies), or an integer number of MiB (requests)",
            "64MiB",
        );
        string_or_count(s, gen)
    }
}

impl JsonSchema for crate::DurationSpec {
    fn schema_name() -> String {
        "Duration".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        let s = string(
            r"^[0-9]{1,9}(ms|s|m|h)$",
            "a duration: \"15s\", \"500ms\", \"2m\" (replies), or an integer number of seconds (requests)",
            "15s",
        );
        string_or_count(s, gen)
    }
}

impl JsonSchema for crate::PortRanges {
    fn schema_name() -> String {
        "PortRanges".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        Schema::Object(string(
            r"^$|^[0-9]{1,5}(-[0-9]{1,5})?(,[0-9]{1,5}(-[0-9]{1,5})?)*$",
            "host ports as comma-separated ports and inclusive ranges",
            "22,8000-8100",
        ))
    }
}

impl JsonSchema for crate::PortRange {
    fn schema_name() -> String {
        "PortRange".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        Schema::Object(string(
            r"^[0-9]{1,5}(-[0-9]{1,5})?$",
            "an inclusive range of host ports",
            "20000-32000",
        ))
    }
}
