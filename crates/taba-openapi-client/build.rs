//! Generates the client from `docs/openapi.json` (kept equal to the
//! server's document by `taba-server`'s `docs_copy_is_current` test).

fn main() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    println!("cargo:rerun-if-changed={src}");
    let text = std::fs::read_to_string(src).expect("docs/openapi.json");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    symbols_as_strings(&mut doc);
    json_only(&mut doc);
    let spec: openapiv3::OpenAPI = serde_json::from_value(doc).expect("an OpenAPI 3.0 document");
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Positional);
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator
        .generate_tokens(&spec)
        .expect("a client from the document");
    let ast: syn::File = syn::parse2(tokens).expect("generated code parses");
    let code = prettyplease::unparse(&ast);
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("client.rs");
    std::fs::write(out, code).unwrap();
}

/// typify names an enum's variants after its values and cannot name `=`
/// or `!=` (a constraint's operator): such an enum is generated as a plain
/// string instead (the server still checks the value).
fn symbols_as_strings(v: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(o) = v else {
        if let Value::Array(a) = v {
            a.iter_mut().for_each(symbols_as_strings);
        }
        return;
    };
    let values: Option<Vec<String>> = o.get("oneOf").and_then(Value::as_array).and_then(|alts| {
        alts.iter()
            .map(|a| {
                a.get("enum")?
                    .as_array()?
                    .first()?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    });
    let unnameable = |s: &String| !s.chars().any(|c| c.is_ascii_alphanumeric());
    if values.is_some_and(|vals| vals.iter().any(unnameable)) {
        o.remove("oneOf");
        o.insert("type".into(), Value::from("string"));
        return;
    }
    o.values_mut().for_each(symbols_as_strings);
}

/// progenitor reads one request media type per operation: a job or a
/// policy is sent as JSON (TOML is for people); and it cannot speak
/// WebSocket, so the two session routes (101) are left out; an upload
/// of a tar is sent as bytes (`application/octet-stream`).
fn json_only(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for ops in paths.values_mut() {
        let Some(ops) = ops.as_object_mut() else {
            continue;
        };
        ops.retain(|_, op| op["responses"].get("101").is_none());
        for op in ops.values_mut() {
            if let Some(content) = op
                .pointer_mut("/requestBody/content")
                .and_then(|c| c.as_object_mut())
            {
                if content.len() > 1 && content.contains_key("application/json") {
                    content.retain(|k, _| k == "application/json");
                }
                // A tar upload is bytes to it.
                if let Some(tar) = content.remove("application/x-tar") {
                    content.insert("application/octet-stream".into(), tar);
                }
            }
        }
    }
    paths.retain(|_, ops| ops.as_object().is_some_and(|o| !o.is_empty()));
}
