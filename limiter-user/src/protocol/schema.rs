//! JSON Schemas (draft 2020-12) of the `--json` outputs, generated from the
//! types that print them: what docs/schemas holds, and what a test compares
//! it with. The schemas describe what is printed (serde's serialize side).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};

use crate::policy::{lists::Cidr, service::Rate};

impl JsonSchema for Rate {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[0-9]+/[sm]$", "description": "N/s or N/m." })
    }
}

impl JsonSchema for Cidr {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Normalized CIDR: 192.168.1.0/24, 2001:db8::/32; a host is address/32 or /128."
        })
    }
}

/// The schema of `T` as printed: pretty JSON with a final newline, keys in
/// alphabetical order (`serde_json`'s map), so the text is stable.
pub fn text<T: JsonSchema>() -> String {
    let schema = SchemaSettings::draft2020_12().for_serialize().into_generator().into_root_schema_for::<T>();
    // Serializing a `serde_json::Value` cannot fail.
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
