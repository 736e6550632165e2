//! Exploit-mitigation link flags for this package's binaries only (see
//! docs/hardening.md): full RELRO with BIND_NOW and a non-executable stack,
//! stated explicitly so a toolchain or target change cannot drop them
//! silently. PIE is rustc's default relocation model on this target and is
//! checked on the ELF by `cargo xtask harden`.
fn main() {
    for arg in ["-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack", "-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
