//! Tidy checks run as tests (`cargo test -p xtask`), after rust-analyzer's
//! `xtask/src/tidy.rs`: every Rust file opens with a `//!` comment saying
//! what it owns, every crate root forbids `unsafe`, and no non-test code of
//! the product crates calls `unwrap`/`expect` (clippy denies them too; this
//! also covers code clippy's test exemption would let through by mistake).
//! And the server's layering: the modules of `server/src` depend one way
//! (`server_modules_depend_one_way`), and `gate/` and the `proof.rs` evidence
//! files import no I/O crate (`the_gate_and_the_proofs_are_pure`).

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

    // ---- the server's layering (ARCHITECTURE.md, "server") ----

    /// The module a server file belongs to: its first path component under
    /// `server/src`, except the evidence files, which are their own
    /// (`backend::proof`, `tls::proof`).
    fn server_module(rel: &Path) -> String {
        let parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        match parts.as_slice() {
            [m, p] if p == "proof" => format!("{m}::proof"),
            [m, ..] => m.clone(),
            [] => String::new(),
        }
    }

    /// A file's code before its test module (`#[cfg(test)] mod …`), without
    /// `//` comment lines. Other `#[cfg(test)]` items stay in: what follows
    /// one mid-file is product code.
    fn product_code(text: &str) -> String {
        let code = text.split("#[cfg(test)]\nmod ").next().unwrap_or("");
        code.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The server modules a file's code names as `crate::X` (a `proof`
    /// child named as `X::proof`). `pub(in crate::X)` is a visibility, not
    /// a dependency.
    fn crate_refs(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = &rest[..i];
            let after = &rest[i + "crate::".len()..];
            rest = after;
            if before.ends_with("in ") || before.ends_with('$') {
                continue;
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                continue;
            }
            if after[name.len()..].starts_with("::proof") {
                out.push(format!("{name}::proof"));
            } else {
                out.push(name);
            }
        }
        out
    }

    /// `code` of the file `rel` (under `server/src`) with each `super::`
    /// path spelled from the crate root, so that `crate_refs` sees it:
    /// `super::session` in `gate/mod.rs` or `super::super::session` in
    /// `gate/request.rs` is `crate::session`.
    fn resolve_super(code: &str, rel: &Path) -> String {
        let mut module: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        if matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            module.pop();
        }
        let mut code = code.to_owned();
        for up in (1..=module.len()).rev() {
            let kept = &module[..module.len() - up];
            let to = if kept.is_empty() {
                "crate::".to_owned()
            } else {
                format!("crate::{}::", kept.join("::"))
            };
            code = code.replace(&"super::".repeat(up), &to);
        }
        code
    }

    /// The server modules the file `rel` (under `server/src`) names.
    fn module_refs(text: &str, rel: &Path) -> Vec<String> {
        crate_refs(&resolve_super(&product_code(text), rel))
    }

    /// module -> (module it names, file) for every file of `server/src`.
    fn server_graph() -> Vec<(String, String, PathBuf)> {
        let src = root().join("server/src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 20, "server/src: {files:?}");
        let mut edges = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap_or(&f).to_owned();
            let from = server_module(&rel);
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let code = resolve_super(&product_code(&text), &rel);
            assert!(
                !code.contains("crate::{"),
                "{}: one `use crate::x::…` per module, so tidy can read the edges",
                f.display()
            );
            for to in module_refs(&text, &rel) {
                if to != from {
                    edges.push((from.clone(), to, rel.clone()));
                }
            }
        }
        edges
    }

    /// Which edges are forbidden, and why. `lib` and `main` may name
    /// anything; so may `cli` (main's half in the library: what each
    /// command does around it) and `server` (the assembly) — and nothing
    /// below names them.
    fn forbidden(from: &str, to: &str) -> Option<&'static str> {
        let io_free = ["backend::proof", "tls::proof"];
        match (from, to) {
            ("lib" | "main" | "cli", _) => None,
            (_, "cli") => Some("cli.rs is main's half: only main.rs names it"),
            ("server", _) => None,
            (_, "server") => Some("server.rs is the assembly: nothing below it names it"),
            ("gate", t) if !io_free.contains(&t) => {
                Some("the gate is pure: it names only the evidence files")
            }
            (f, _) if f.ends_with("::proof") => Some("an evidence file names nothing"),
            (
                "proxy",
                "session" | "gateway" | "native" | "state" | "control" | "live" | "reload" | "web"
                | "roster" | "config",
            ) => Some(
                "the proxy moves frames of a gate::Session; it knows no listener, state or policy",
            ),
            (
                "backend" | "backend_tls" | "web" | "demo" | "config" | "limits" | "roster",
                "session" | "gate" | "gateway" | "native" | "proxy" | "state" | "live" | "reload"
                | "control",
            ) => {
                Some("below session.rs: nothing here names the upgrade, its listeners or the state")
            }
            ("web", "backend" | "tls") => Some("the display app serves files; it connects nothing"),
            ("session", "gateway" | "native" | "control" | "reload") => {
                Some("session.rs is called by the listeners, never the other way")
            }
            (f, "gateway") if f != "native" => {
                Some("only the listeners and server.rs name a listener")
            }
            (_, "native") => Some("only server.rs names a listener"),
            _ => None,
        }
    }

    #[test]
    fn server_modules_depend_one_way() {
        let edges = server_graph();
        let bad: Vec<String> = edges
            .iter()
            .filter_map(|(from, to, file)| {
                forbidden(from, to)
                    .map(|why| format!("{} → {to} ({}): {why}", from, file.display()))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "forbidden server module edges:\n{}",
            bad.join("\n")
        );
        // No cycles either. `control` is left out: `state.rs` holds its
        // `RateLimiter` and it reads `state::Shared`; the typed control
        // protocol (issue 11's other half) moves the limiter out.
        let graph: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = edges
            .iter()
            .filter(|(f, t, _)| f != "control" && t != "control" && f != "lib" && f != "main")
            .fold(Default::default(), |mut g, (f, t, _)| {
                g.entry(f.as_str()).or_default().insert(t.as_str());
                g
            });
        fn visit<'a>(
            n: &'a str,
            g: &std::collections::BTreeMap<&'a str, std::collections::BTreeSet<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut std::collections::BTreeSet<&'a str>,
        ) -> Option<Vec<&'a str>> {
            if let Some(i) = path.iter().position(|p| *p == n) {
                let mut cycle = path[i..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            if !done.insert(n) {
                return None;
            }
            path.push(n);
            for m in g.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, g, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = std::collections::BTreeSet::new();
        for n in graph.keys() {
            let cycle = visit(n, &graph, &mut Vec::new(), &mut done);
            assert!(
                cycle.is_none(),
                "a cycle among server modules: {:?}",
                cycle.unwrap_or_default()
            );
        }
    }

    #[test]
    fn the_layering_check_sees_what_it_must() {
        // the reader itself: comments, visibilities and macros are not edges
        let code = product_code(
            "use crate::gate::Peer;\n// crate::server\npub(in crate::backend) fn f() {}\n\
             $crate::audit!();\nlet x = crate::backend::proof::BackendConnected;\n",
        );
        assert_eq!(crate_refs(&code), ["gate", "backend::proof"]);
        // `super::` paths name modules too, seen from the file's place
        let sup = "use super::super::session::X;\nuse super::Malformed;\n";
        let r = |text: &str, rel: &str| module_refs(text, Path::new(rel));
        assert_eq!(r(sup, "gate/request.rs"), ["session", "gate"]);
        assert_eq!(r("use super::session::X;\n", "gate/mod.rs"), ["session"]);
        assert_eq!(r("use super::state::Shared;\n", "proxy.rs"), ["state"]);
        assert_eq!(
            r("pub(super) fn f() {}\n", "gate/request.rs"),
            Vec::<String>::new()
        );
        // a `#[cfg(test)]` item mid-file hides nothing after it; the test
        // module does
        let mid = "#[cfg(test)]\nfn t() {}\nfn f() { crate::session::g() }\n\
                   #[cfg(test)]\nmod tests { use crate::server::S; }\n";
        assert_eq!(r(mid, "gate/peer.rs"), ["session"]);
        assert_eq!(
            server_module(Path::new("backend/proof.rs")),
            "backend::proof"
        );
        assert_eq!(server_module(Path::new("gate/request.rs")), "gate");
        // and the table refuses what the layering forbids
        for (from, to) in [
            ("gate", "gateway"),
            ("gate", "native"),
            ("gate", "backend"),
            ("gate", "proxy"),
            ("gate", "session"),
            ("gate", "tls"),
            ("proxy", "session"),
            ("proxy", "state"),
            ("backend", "gate"),
            ("backend", "session"),
            ("backend::proof", "backend"),
            ("session", "gateway"),
            ("web", "state"),
            ("state", "server"),
        ] {
            assert!(forbidden(from, to).is_some(), "{from} → {to} allowed");
        }
        for (from, to) in [
            ("gate", "backend::proof"),
            ("gate", "tls::proof"),
            ("session", "gate"),
            ("session", "backend"),
            ("session", "proxy"),
            ("proxy", "gate"),
            ("gateway", "session"),
            ("native", "gateway"),
            ("server", "gateway"),
        ] {
            assert!(forbidden(from, to).is_none(), "{from} → {to} refused");
        }
    }

    #[test]
    fn the_gate_and_the_proofs_are_pure() {
        let src = root().join("server/src");
        let mut files = Vec::new();
        rust_files(&src.join("gate"), &mut files);
        assert!(files.len() >= 5, "gate/: {files:?}");
        files.push(src.join("backend/proof.rs"));
        files.push(src.join("tls/proof.rs"));
        const IO: &[&str] = &[
            "tokio",
            "axum",
            "hyper",
            "hyper_util",
            "rustls",
            "tokio_rustls",
            "tokio_tungstenite",
            "tungstenite",
            "tower",
            "futures_util",
            "nix",
            "libc",
        ];
        let mut bad = Vec::new();
        for f in &files {
            let code = product_code(&std::fs::read_to_string(f).unwrap_or_default());
            let words: Vec<&str> = code
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .collect();
            for w in words {
                // `::tokio::net` is `tokio::net`
                let head = w.trim_start_matches(':').split("::").next().unwrap_or("");
                if w.contains("::") && IO.contains(&head) {
                    bad.push(format!("{}: {w}", f.display()));
                }
            }
            if f.ends_with("proof.rs") && code.lines().any(|l| l.trim_start().starts_with("use ")) {
                bad.push(format!("{}: an evidence file imports nothing", f.display()));
            }
        }
        assert!(bad.is_empty(), "I/O in the pure layer:\n{}", bad.join("\n"));
    }
}
