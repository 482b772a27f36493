//! What each fuzz target checks, in one place.
//!
//! Every function here takes arbitrary bytes, feeds them to one parser that
//! reads untrusted input exactly as taba does, and panics if a property that
//! must hold for *any* input does not: no panic inside the parser, errors that
//! name a field or a position, accepted values that survive a round trip,
//! nothing written outside a layer's root. The cargo-fuzz targets in `fuzz/`
//! are one line each around these functions, and `tests/corpus.rs` replays
//! every file of `fuzz/corpus/<target>/` through them on stable, so a crash
//! the fuzzer once found stays fixed.
//!
//! This crate holds no parsing logic of its own: it calls the real code.

use std::fmt::Debug;
use std::fs;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use taba_types::parse::{parse_job_json, parse_job_toml, JobParseError};
use taba_types::wire::{
    check_protocol, AllocUpdateRequest, HeartbeatRequest, ImageManifest, JoinRequest,
    NodeAllocations, RegisterRequest,
};
use taba_types::FieldError;

/// A fuzz target: its name (the directory of its corpus) and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("job_spec", job_spec),
    ("image_reference", image_reference),
    ("layer_unpack", layer_unpack),
    ("image_manifest", image_manifest),
    ("agent_message", agent_message),
];

// ---- job specs ----

/// A job file (TOML, as `taba job run` and `POST /v1/jobs` read it) or a JSON
/// job body: parsing never panics; an error names a position or a field and
/// a reason; an accepted spec's JSON form is accepted and means the same.
pub fn job_spec(data: &[u8]) {
    for (form, result) in [
        ("toml", parse_job_toml(data)),
        ("json", parse_job_json(data)),
    ] {
        match result {
            Ok(spec) => {
                let json = serde_json::to_vec(&spec).expect("a job spec serializes");
                let back = parse_job_json(&json).unwrap_or_else(|e| {
                    panic!("the JSON form of an accepted {form} job is rejected: {e}\n{spec:#?}")
                });
                assert_eq!(
                    back, spec,
                    "the JSON form of a {form} job means something else"
                );
            }
            Err(e) => check_job_error(&e),
        }
    }
}

fn check_job_error(e: &JobParseError) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "empty error message: {e:?}");
    if let JobParseError::Invalid(v) = e {
        assert!(!v.0.is_empty(), "invalid without a field error");
        for f in &v.0 {
            check_field_error(f);
        }
    }
}

fn check_field_error(f: &FieldError) {
    assert!(!f.path.is_empty(), "field error without a path: {f:?}");
    assert!(!f.reason.is_empty(), "field error without a reason: {f:?}");
}

// ---- image references ----

/// An image reference as a user or an archive writes it: parsing never
/// panics; an accepted reference's canonical and familiar forms are accepted
/// and name the same image.
pub fn image_reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let looked = taba_image::fuzzing::lookup(s);
    let Ok((canonical, familiar)) = taba_image::fuzzing::reference(s) else {
        return;
    };
    if !s.starts_with("sha256:") {
        assert_eq!(
            looked.as_ref().ok().cloned().flatten().as_deref(),
            Some(canonical.as_str()),
            "lookup of {s:?} disagrees with its parse"
        );
    }
    let again = taba_image::fuzzing::reference(&canonical)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} of {s:?} is rejected: {e}"));
    assert_eq!(again, (canonical.clone(), familiar.clone()), "{s:?}");
    let short = taba_image::fuzzing::reference(&familiar)
        .unwrap_or_else(|e| panic!("familiar form {familiar:?} of {s:?} is rejected: {e}"));
    assert_eq!(short.0, canonical, "familiar form {familiar:?} of {s:?}");
}

// ---- layer unpacking ----

/// A layer blob (tar, gzip or zstd), unpacked as an import does into a fresh
/// directory: never panics, and whatever the blob holds (`..`, absolute names,
/// symlinks then paths through them, hard links, whiteouts, devices), nothing
/// is created outside the layer's directory.
pub fn layer_unpack(data: &[u8]) {
    let tmp = scratch("unpack");
    // A sibling of the layer that must stay empty: "../outside" from the layer root.
    fs::create_dir(tmp.path().join("outside")).expect("mkdir outside");
    let layer = tmp.path().join("layer");
    let result = taba_image::fuzzing::unpack_layer(data, &layer, &"0".repeat(64));
    if let Err(e) = &result {
        assert!(!e.to_string().is_empty(), "empty error: {e:?}");
    }
    let mut names: Vec<String> = fs::read_dir(tmp.path())
        .expect("list the temp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names == ["layer", "outside"],
        "unpacking created {names:?} beside the layer ({result:?})"
    );
    let outside: Vec<_> = fs::read_dir(tmp.path().join("outside"))
        .expect("list outside")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(
        outside.is_empty(),
        "unpacking wrote outside the layer: {outside:?} ({result:?})"
    );
}

/// An empty directory for one run, under a temp dir made once per thread
/// (and removed when the thread ends): a fuzzer runs thousands of inputs a
/// second, so the directory is emptied rather than made anew.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Root removes whatever the modes in a layer say.
        fs::remove_dir_all(&self.0).expect("remove the run's scratch dir");
    }
}

fn scratch(what: &str) -> Scratch {
    thread_local! {
        static BASE: tempfile::TempDir = tempfile::Builder::new()
            .prefix("taba-fuzz-")
            .tempdir()
            .expect("a temp dir");
    }
    let dir = BASE.with(|b| b.path().join(what));
    fs::create_dir(&dir).expect("create the run's scratch dir");
    Scratch(dir)
}

// ---- image manifests and configs ----

/// A JSON document in every role an image's JSON plays: an image config
/// (docker and OCI share it), a manifest a server sends to an agent, the
/// `manifest.json` of a `docker save` tar and the `index.json` of an OCI
/// layout: parsing never panics and errors say something; an accepted
/// server manifest names only well-formed digests and references.
pub fn image_manifest(data: &[u8]) {
    let layers = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("rootfs")?.get("diff_ids")?.as_array().map(Vec::len))
        .unwrap_or(0);
    for n in [layers, layers + 1] {
        if let Err(e) = taba_image::fuzzing::image_config(data, n) {
            assert!(!e.to_string().is_empty());
        }
    }
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(data) {
        if taba_image::fuzzing::image_manifest(&m).is_ok() {
            for d in
                std::iter::once(&m.id).chain(m.layers.iter().flat_map(|l| [&l.digest, &l.diff_id]))
            {
                taba_image::parse_digest(d).expect("an accepted manifest's digest parses");
            }
            round_trip(&m);
        }
    }
    archive_roles(data);
}

/// `data` as the `manifest.json` (with a fixed config and layer beside it)
/// and as the `index.json` of an OCI layout, through the import's planning.
fn archive_roles(data: &[u8]) {
    const CONFIG: &[u8] = br#"{"rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let tmp = scratch("manifest");
    let docker: &[(&str, &[u8])] = &[
        ("manifest.json", data),
        ("config.json", CONFIG),
        ("layer.tar", &[0u8; 1024]),
    ];
    let oci: &[(&str, &[u8])] = &[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", data),
    ];
    for (i, members) in [docker, oci].into_iter().enumerate() {
        let path = tmp.path().join(format!("{i}.tar"));
        write_tar(&path, members);
        let scratch = tmp.path().join(format!("scratch{i}"));
        fs::create_dir(&scratch).expect("mkdir scratch");
        match taba_image::fuzzing::archive_plan(&path, &scratch) {
            Ok((refs, _)) => {
                for r in refs {
                    taba_image::fuzzing::reference(&r)
                        .unwrap_or_else(|e| panic!("planned reference {r:?} is rejected: {e}"));
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(fs::File::create(path).expect("create a tar"));
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *bytes).expect("append");
    }
    b.finish().expect("finish the tar");
}

// ---- agent messages ----

/// An agent's message to the server (register, heartbeat, allocation
/// updates, join), parsed and checked as the server does before it looks at
/// its state; and the server's answers an agent parses. Never panics; a
/// refusal names its field; an accepted message survives a round trip.
pub fn agent_message(data: &[u8]) {
    if let Some(m) = parse::<RegisterRequest>(data) {
        accepted(m.protocol, m.validate(), &m);
    }
    if let Some(m) = parse::<HeartbeatRequest>(data) {
        accepted(m.protocol, Ok(()), &m);
    }
    if let Some(m) = parse::<AllocUpdateRequest>(data) {
        accepted(m.protocol, m.validate(), &m);
    }
    if let Some(m) = parse::<JoinRequest>(data) {
        accepted(m.protocol, m.validate(), &m);
    }
    if let Some(m) = parse::<NodeAllocations>(data) {
        let _ = check_protocol(m.protocol);
    }
}

/// Parses a body as the server's `parse_json` does (UTF-8, then JSON with
/// the field path of a type error, then nothing after the value).
fn parse<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    let text = std::str::from_utf8(data).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => de.end().ok().map(|_| v),
        Err(e) => {
            assert!(!e.inner().to_string().is_empty());
            None
        }
    }
}

fn accepted<T>(protocol: u32, valid: Result<(), FieldError>, m: &T)
where
    T: Serialize + DeserializeOwned + Debug,
{
    if check_protocol(protocol).is_err() {
        return;
    }
    match valid {
        Ok(()) => round_trip(m),
        Err(f) => check_field_error(&f),
    }
}

/// Serialized and parsed again, a value is the same (compared in its JSON
/// form, so types without `PartialEq` can be checked too).
fn round_trip<T: Serialize + DeserializeOwned + Debug>(v: &T) {
    let json = serde_json::to_value(v).expect("serializes");
    let back: T = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("does not parse back: {e}\n{v:#?}"));
    let again = serde_json::to_value(&back).expect("serializes");
    assert_eq!(json, again, "changes in a round trip: {v:#?}");
}
