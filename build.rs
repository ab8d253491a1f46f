//! Build information for `keyproxy --version`: the git commit (when built from a checkout) and target.

fn main() {
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KEYPROXY_GIT_SHA={sha}");
    println!(
        "cargo:rustc-env=KEYPROXY_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=KEYPROXY_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    // Re-run when the commit changes. In a worktree `.git` is a file, so ask git where HEAD and the
    // branch refs live rather than assuming `.git/` (a path that doesn't exist re-runs every build).
    for (flag, file) in [
        ("--git-dir", "HEAD"),
        ("--git-common-dir", "refs/heads"),
        ("--git-common-dir", "packed-refs"),
    ] {
        if let Some(dir) = git(&["rev-parse", flag]) {
            let path = std::path::Path::new(&dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}
