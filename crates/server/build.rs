//! Build facts for `starling_build_info`: the git commit (`git rev-parse --short HEAD`,
//! `unknown` outside a git checkout or without git) and the compiler's version. No
//! dependencies; reruns when HEAD moves (a commit, a checkout), not on every build.
//! (The variables are not named `STARLING_*`: cargo sets them for `cargo test` and
//! `cargo run` too, and the server reads `STARLING_*` as settings.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_INFO_COMMIT={commit}");
    println!("cargo:rustc-env=BUILD_INFO_RUSTC={}", rustc_version());
    // HEAD (in a worktree, the worktree's own), the branch it names (a loose ref, or
    // packed-refs once git packs it). Only files that exist: a missing one would make
    // cargo rerun this script on every build.
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watched.push(Path::new(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(head_ref));
        }
        watched.push(common.join("packed-refs"));
    }
    for path in watched {
        let path = absolute(&path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// The trimmed standard output of `git args` run in this crate's directory, if it
/// succeeded and printed something.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// A path git printed relative to this crate's directory, made absolute.
fn absolute(path: &Path) -> PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

/// `1.95.0` from `rustc 1.95.0 (hash date)`; `unknown` when rustc does not say.
fn rustc_version() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
