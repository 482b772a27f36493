//! Shell integration tried the way a user uses it: the completion script
//! loaded into a real bash completes commands and flags, and the man pages
//! render with the system's `man`.

mod common;

use common::taba_bin;
use std::process::Command;

/// What bash's completion function of `taba` offers for `line` (the word
/// under the cursor is the last one).
fn bash_completes(line: &str) -> Vec<String> {
    let script = format!(
        r#"source <("{bin}" completion bash)
line='{line}'
read -ra COMP_WORDS <<< "$line"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="$line"; COMP_POINT=${{#line}}
_taba taba "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        bin = taba_bin().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_subcommands_and_flags() {
    assert_eq!(bash_completes("taba jo"), ["job"]);
    let alloc = bash_completes("taba alloc ");
    for want in ["status", "logs", "exec", "migrate", "console"] {
        assert!(alloc.iter().any(|w| w == want), "{want} in {alloc:?}");
    }
    assert!(!alloc.iter().any(|w| w == "shim"), "{alloc:?}");
    assert_eq!(bash_completes("taba job run --det"), ["--detach"]);
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    for shell in ["zsh", "fish"] {
        let out = Command::new(taba_bin())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for cmd in [
            "job",
            "alloc",
            "node",
            "image",
            "namespace",
            "events",
            "acl",
        ] {
            assert!(text.contains(cmd), "{shell} lacks {cmd}");
        }
    }
    let bad = Command::new(taba_bin())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_pages_render_with_man() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(taba_bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("taba-alloc-migrate.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs (package man-db)");
    let text = String::from_utf8_lossy(&page.stdout);
    assert!(page.status.success(), "{text}");
    assert!(text.contains("taba-alloc-migrate"), "{text}");
    assert!(text.contains("--to"), "{text}");
}
