//! Replays every fuzz corpus file (`fuzz/corpus/<target>/*`, crash inputs
//! included) through its target's check, on stable, in the main suite.

use std::fs;
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_passes_its_check() {
    for (name, check) in taba_fuzz::TARGETS {
        let dir = corpus_dir(name);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 3,
            "corpus {} holds {} files; seed it with real inputs",
            dir.display(),
            files.len()
        );
        for f in files {
            let data = fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let run = std::panic::catch_unwind(|| check(&data));
            assert!(run.is_ok(), "{name}: {} fails its check", f.display());
        }
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for (name, _) in taba_fuzz::TARGETS {
        let f = dir.join(format!("{name}.rs"));
        let src = fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            src.contains(&format!("taba_fuzz::{name}(")),
            "{} does not call taba_fuzz::{name}",
            f.display()
        );
    }
}
