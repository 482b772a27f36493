//! The OpenAPI 3.0 document of the route table, made from the Rust types
//! themselves: request and reply bodies and query parameters are the JSON
//! Schemas (schemars) of the structs the handlers decode and encode, so
//! the document cannot drift from the code. `docs/openapi.json` is a copy
//! that a test keeps equal to this (clients are generated from it).

use super::query::{BlockingParams, INDEX_HEADER, NEXT_TOKEN_HEADER};
use super::{openapi_path, BodyKind, Reply, Route};
use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::schema::{RootSchema, Schema};
use serde_json::{json, Map, Value};
use taba_types::api::ErrorBody;

/// The generator of the document's schemas: OpenAPI 3.0 dialect, shared
/// definitions under `#/components/schemas/`.
fn generator() -> SchemaGenerator {
    SchemaGenerator::new(SchemaSettings::openapi3())
}

/// The root schema of a query struct, inlined (its fields are parameters).
pub fn query_schema(f: super::SchemaFn) -> RootSchema {
    let settings = SchemaSettings::openapi3().with(|s| s.inline_subschemas = true);
    let mut gen = SchemaGenerator::new(settings);
    let schema = f(&mut gen);
    RootSchema {
        meta_schema: None,
        schema: schema.into_object(),
        definitions: gen.take_definitions(),
    }
}

fn to_json(s: &Schema) -> Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({}))
}

/// The query parameters of a struct's schema: name, type, description,
/// whether required.
fn query_parameters(f: super::SchemaFn) -> Vec<Value> {
    let root = query_schema(f);
    let Some(obj) = root.schema.object.as_ref() else {
        return Vec::new();
    };
    obj.properties
        .iter()
        .map(|(name, schema)| {
            let mut schema = to_json(schema);
            let description = schema
                .as_object_mut()
                .and_then(|o| {
                    o.remove("nullable");
                    o.remove("description")
                })
                .unwrap_or(Value::Null);
            let mut p = json!({
                "name": name,
                "in": "query",
                "required": obj.required.contains(name),
                "schema": schema,
            });
            if !description.is_null() {
                p["description"] = description;
            }
            p
        })
        .collect()
}

/// The operation id of a route: method and path as one identifier
/// (`get_jobs_name_status`).
pub fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        id.push('_');
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        id.extend(seg.chars().map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '_',
        }));
    }
    id
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn request_body(body: BodyKind, gen: &mut SchemaGenerator) -> Option<Value> {
    let text = json!({"type": "string"});
    let content = match body {
        BodyKind::None => return None,
        BodyKind::Json(f) | BodyKind::OptionalJson(f) => json_content(to_json(&f(gen))),
        BodyKind::Job => {
            let spec = to_json(&super::s::<taba_types::JobSpec>(gen));
            json!({"application/json": {"schema": spec}, "application/toml": {"schema": text}})
        }
        BodyKind::Policy => {
            let p = to_json(&super::s::<taba_types::acl::AclPolicy>(gen));
            json!({"application/json": {"schema": p}, "application/toml": {"schema": text}})
        }
        BodyKind::Tar => {
            json!({"application/x-tar": {"schema": {"type": "string", "format": "binary"}}})
        }
    };
    let required = !matches!(body, BodyKind::OptionalJson(_));
    Some(json!({"required": required, "content": content}))
}

fn success(rt: &Route, gen: &mut SchemaGenerator) -> (String, Value) {
    let mut headers = Map::new();
    if rt.blocking {
        headers.insert(
            INDEX_HEADER.into(),
            json!({"description": "the state's index this reply was read at: pass it as `index` to wait for a change",
                   "schema": {"type": "integer", "format": "uint64", "minimum": 0}}),
        );
    }
    if rt.paged {
        headers.insert(
            NEXT_TOKEN_HEADER.into(),
            json!({"description": "the `next_token` of the next page (absent on the last page)",
                   "schema": {"type": "string"}}),
        );
    }
    let (status, mut resp) = match rt.reply {
        Reply::Json(f) => (
            "200",
            json!({"description": "success", "content": json_content(to_json(&f(gen)))}),
        ),
        Reply::Raw(ct) => {
            let schema = match ct {
                "application/json" => json!({"type": "object"}),
                _ => json!({"type": "string", "format": "binary"}),
            };
            (
                "200",
                json!({"description": "success", "content": {ct: {"schema": schema}}}),
            )
        }
        Reply::WebSocket => (
            "101",
            json!({"description": "switching protocols: the WebSocket session"}),
        ),
    };
    if !headers.is_empty() {
        resp["headers"] = Value::Object(headers);
    }
    (status.to_owned(), resp)
}

fn operation(rt: &Route, gen: &mut SchemaGenerator) -> Value {
    let p = openapi_path(rt.path);
    let mut params: Vec<Value> = Vec::new();
    for seg in p.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            params.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
    }
    if let Some(q) = rt.query {
        params.extend(query_parameters(q));
    }
    if rt.blocking {
        params.extend(query_parameters(super::s::<BlockingParams>));
    }
    let error = json!({"$ref": "#/components/responses/Error"});
    let (status, ok) = success(rt, gen);
    let mut op = json!({
        "summary": rt.summary,
        "operationId": operation_id(rt.method, &p),
        "parameters": params,
        "x-taba-auth": rt.auth.describe(),
        "responses": {status: ok, "4XX": error.clone(), "5XX": error},
    });
    if let Some(b) = request_body(rt.body, gen) {
        op["requestBody"] = b;
    }
    if matches!(rt.auth, crate::acl::AuthClass::Bootstrap) {
        op["security"] = json!([]);
    }
    op
}

/// What the derived schemas say less exactly than the server reads: an
/// integer's bounds by its format (`uint64` up to 2^64-1), and sets
/// (`uniqueItems`), whose repeated items the server folds into one.
fn refine(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("uniqueItems");
            let max = match o.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(u64::from(u8::MAX)),
                Some("uint16") => Some(u64::from(u16::MAX)),
                Some("uint32") => Some(u64::from(u32::MAX)),
                Some("uint64" | "uint") => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max {
                o.entry("maximum").or_insert(Value::from(max));
            }
            o.values_mut().for_each(refine);
        }
        Value::Array(a) => a.iter_mut().for_each(refine),
        _ => {}
    }
}

/// The OpenAPI 3.0 document of `routes`.
pub fn openapi_document(routes: &[Route]) -> Value {
    let mut gen = generator();
    let mut paths = Map::new();
    for rt in routes {
        let op = operation(rt, &mut gen);
        let entry = paths
            .entry(openapi_path(rt.path))
            .or_insert_with(|| json!({}));
        entry[rt.method.to_lowercase()] = op;
    }
    let error = to_json(&super::s::<ErrorBody>(&mut gen));
    let schemas: Map<String, Value> = gen
        .take_definitions()
        .iter()
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect();
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "taba",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of taba's servers. Errors are `{\"error\": {\"message\", \"field\", \"code\"}}`; lists page with `per_page` and `next_token` (`X-Taba-NextToken`); reads block with `index` and `wait` (`X-Taba-Index`). See docs/api.md.",
        },
        "paths": paths,
        "security": [{"token": []}],
        "components": {
            "schemas": schemas,
            "responses": {"Error": {
                "description": "an error: `code` says which (docs/api.md lists them), `field` where in the input",
                "content": json_content(error),
            }},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                "description": "an ACL token's secret (ACLs on), or none (ACLs off)"}},
        },
    });
    refine(&mut doc);
    doc
}
