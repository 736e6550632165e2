//! Tidy checks run as tests (`cargo test -p xtask`), after rust-analyzer's
//! `xtask/src/tidy.rs`: every Rust file opens with a `//!` comment saying
//! what it owns, every crate root forbids `unsafe`, and no non-test code of
//! the product crates calls `unwrap`/`expect` (clippy denies them too; this
//! also covers code clippy's test exemption would let through by mistake).

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::proc::root;

    const DIRS: &[&str] = &[
        "crates",
        "server",
        "launcher",
        "client",
        "tests",
        "xtask",
        "fuzz/fuzz_targets",
    ];

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    fn all() -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in DIRS {
            rust_files(&root().join(d), &mut v);
        }
        assert!(v.len() > 30, "found only {} files: wrong root?", v.len());
        v
    }

    #[test]
    fn every_file_starts_with_a_module_doc() {
        let bad: Vec<_> = all()
            .into_iter()
            .filter(|p| {
                !std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .starts_with("//!")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "files without a leading //! comment: {bad:?}"
        );
    }

    #[test]
    fn every_crate_root_forbids_unsafe() {
        let roots: Vec<_> = all()
            .into_iter()
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name == "lib.rs" || name == "main.rs"
            })
            .collect();
        assert!(roots.len() >= 8, "{roots:?}");
        let bad: Vec<_> = roots
            .into_iter()
            .filter(|p| {
                !std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .contains("#![forbid(unsafe_code)]")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "crate roots without #![forbid(unsafe_code)]: {bad:?}"
        );
    }

    #[test]
    fn no_unwrap_or_expect_outside_tests_in_product_crates() {
        let mut bad = Vec::new();
        for d in ["crates", "server", "launcher", "client"] {
            let mut files = Vec::new();
            rust_files(&root().join(d), &mut files);
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                let fname = f.to_string_lossy();
                if fname.contains("/tests") || fname.contains("/benches/") {
                    continue;
                }
                // everything after the first #[cfg(test)] is test code
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for (i, line) in code.lines().enumerate() {
                    if line.contains(".unwrap()") || line.contains(".expect(") {
                        bad.push(format!("{}:{}", f.display(), i + 1));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "unwrap/expect outside tests: {bad:?}");
    }
}
