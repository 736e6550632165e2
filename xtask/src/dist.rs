//! `cargo xtask dist`: the Debian package `target/dist/screengate_<version>_<arch>.deb`,
//! laid out here and built with `dpkg-deb --root-owner-group --build` (no
//! cargo-deb): the stripped release binaries, the systemd units, the
//! sysusers.d and tmpfiles.d entries, the default configuration (a
//! conffile), the docs, and the maintainer scripts, which are checked with
//! `shellcheck` first.
//!
//! Owns the layout, the control file and `Depends:` (read from the binaries'
//! ELF: the shared libraries and the newest glibc symbol version they need).
//! The files themselves live in `dist/deb` and `dist/systemd`; what the
//! package does on a machine is proved by the e2e case in `e2e_dist.rs`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use goblin::elf::Elf;

use crate::proc::{RELEASE_PACKAGES, build_release, root, target_dir};

/// The package's name.
pub const PACKAGE: &str = "screengate";
/// The binaries it ships in /usr/bin.
pub const BINARIES: [&str; 3] = ["screengate", "screengate-launch", "screengate-client"];
/// Its one conffile.
pub const CONFFILE: &str = "/etc/screengate/screengate.toml";
/// The server's unit, as installed.
pub const SYSTEM_UNIT: &str = "/usr/lib/systemd/system/screengate.service";
/// The server's gateway socket unit, as installed.
pub const SOCKET_UNIT: &str = "/usr/lib/systemd/system/screengate.socket";
/// The launcher's user unit, as installed.
pub const USER_UNIT: &str = "/usr/lib/systemd/user/screengate-launch.service";

/// Files copied from the source tree: (source, path in the package, mode).
const FILES: &[(&str, &str, u32)] = &[
    ("dist/systemd/screengate.service", SYSTEM_UNIT, 0o644),
    ("dist/systemd/screengate.socket", SOCKET_UNIT, 0o644),
    (
        "dist/systemd/examples/tcp-backend.conf",
        "/usr/share/doc/screengate/examples/tcp-backend.conf",
        0o644,
    ),
    ("dist/systemd/screengate-launch.service", USER_UNIT, 0o644),
    (
        "dist/deb/sysusers.conf",
        "/usr/lib/sysusers.d/screengate.conf",
        0o644,
    ),
    (
        "dist/deb/tmpfiles.conf",
        "/usr/lib/tmpfiles.d/screengate.conf",
        0o644,
    ),
    ("dist/deb/screengate.toml", CONFFILE, 0o644),
    ("README.md", "/usr/share/doc/screengate/README.md", 0o644),
    (
        "docs/deployment.md",
        "/usr/share/doc/screengate/deployment.md",
        0o644,
    ),
    (
        "dist/deb/copyright",
        "/usr/share/doc/screengate/copyright",
        0o644,
    ),
];

/// The maintainer scripts, from `dist/deb`.
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

/// `cargo xtask dist`.
pub fn run() -> Result<bool> {
    let deb = build(None)?;
    let size = std::fs::metadata(&deb)?.len();
    println!("dist: {} ({size} bytes)", deb.display());
    Ok(true)
}

/// The workspace's version (xtask shares it).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `dpkg --print-architecture`.
pub fn arch() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture (apt-get install dpkg)")?;
    if !out.status.success() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds the release binaries (a no-op when `harden` just did) and the
/// package; `version` overrides the workspace's (the e2e's upgrade).
/// Returns the path of the .deb.
pub fn build(version: Option<&str>) -> Result<PathBuf> {
    let release = build_release(RELEASE_PACKAGES)?;
    let version = version.unwrap_or(self::version());
    let arch = arch()?;
    let name = format!("{PACKAGE}_{version}_{arch}");
    let dist = target_dir().join("dist");
    let tree = dist.join(&name);
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("remove {}", tree.display()))?;
    }
    let src = root();
    let mut elves = Vec::new();
    for bin in BINARIES {
        let to = place(&tree, &format!("/usr/bin/{bin}"))?;
        let st = Command::new("strip")
            .arg("-o")
            .arg(&to)
            .arg(release.join(bin))
            .status()
            .context("running strip (apt-get install binutils)")?;
        if !st.success() {
            bail!("strip {bin} failed");
        }
        set_mode(&to, 0o755)?;
        elves.push(std::fs::read(&to)?);
    }
    for (from, to, mode) in FILES {
        let to = place(&tree, to)?;
        std::fs::copy(src.join(from), &to).with_context(|| format!("copy {from}"))?;
        set_mode(&to, *mode)?;
    }
    let debian = tree.join("DEBIAN");
    mkdirs(&tree, &debian)?;
    shellcheck(&src.join("dist/deb"))?;
    for s in SCRIPTS {
        let to = debian.join(s);
        std::fs::copy(src.join("dist/deb").join(s), &to).with_context(|| format!("copy {s}"))?;
        set_mode(&to, 0o755)?;
    }
    write(&debian.join("conffiles"), &format!("{CONFFILE}\n"))?;
    write(&debian.join("md5sums"), &md5sums(&tree)?)?;
    let control = control(version, &arch, &depends(&elves)?, installed_kib(&tree)?);
    write(&debian.join("control"), &control)?;
    let deb = dist.join(format!("{name}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .output()
        .context("running dpkg-deb (apt-get install dpkg)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb --build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(deb)
}

fn control(version: &str, arch: &str, depends: &str, kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: screengate maintainers <screengate@localhost>\n\
         Installed-Size: {kib}\n\
         Depends: {depends}\n\
         Recommends: systemd, chromium\n\
         Section: net\n\
         Priority: optional\n\
         Description: guard for the local link between a smart screen's display and its SDK\n \
         screengate sits in front of the voice-assistant SDK's WebSocket on a\n \
         smart-screen device: a loopback TLS listener whose upgrade guard checks\n \
         Host, Origin and a single-use, time-limited token before it proxies a\n \
         byte, a Unix control socket that mints tokens for allowed local users,\n \
         and screengate-launch, which starts Chromium as the display client.\n"
    )
}

/// `Depends:` of the binaries: each shared library they link mapped to
/// its package, libc6 at the newest `GLIBC_x.y` symbol version used.
fn depends(elves: &[Vec<u8>]) -> Result<String> {
    let mut glibc = (2u32, 0u32);
    let mut deps: Vec<String> = Vec::new();
    for bytes in elves {
        let elf = Elf::parse(bytes).context("not an ELF file")?;
        for lib in &elf.libraries {
            let pkg = match *lib {
                "libc.so.6"
                | "libm.so.6"
                | "libpthread.so.0"
                | "libdl.so.2"
                | "librt.so.1"
                | "ld-linux-x86-64.so.2"
                | "ld-linux-aarch64.so.1"
                | "ld-linux-armhf.so.3" => "libc6",
                "libgcc_s.so.1" => "libgcc-s1",
                other => bail!("a binary links {other}: add its Debian package to dist::depends"),
            };
            if pkg != "libc6" && !deps.iter().any(|d| d == pkg) {
                deps.push(pkg.to_owned());
            }
        }
        if let Some(vn) = &elf.verneed {
            for need in vn.iter() {
                for aux in need.iter() {
                    let name = elf.dynstrtab.get_at(aux.vna_name).unwrap_or_default();
                    if let Some(v) = name.strip_prefix("GLIBC_") {
                        let mut it = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
                        let got = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                        glibc = glibc.max(got);
                    }
                }
            }
        }
    }
    let mut all = vec![format!("libc6 (>= {}.{})", glibc.0, glibc.1)];
    all.extend(deps);
    // /bin/kill, for the unit's ExecReload=.
    all.push("procps".to_owned());
    Ok(all.join(", "))
}

/// `shellcheck` on the maintainer scripts (POSIX sh); refuses on a finding.
fn shellcheck(dir: &Path) -> Result<()> {
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .args(SCRIPTS.map(|s| dir.join(s)))
        .output()
        .context("running shellcheck (apt-get install shellcheck)")?;
    if !out.status.success() {
        bail!(
            "shellcheck found problems in the maintainer scripts:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// `md5sums` for every file under the tree but DEBIAN/ (what `dpkg --verify` reads).
fn md5sums(tree: &Path) -> Result<String> {
    let mut files = Vec::new();
    walk(tree, &mut files)?;
    files.retain(|f| !f.starts_with(tree.join("DEBIAN")));
    files.sort();
    let out = Command::new("md5sum")
        .current_dir(tree)
        .args(
            files
                .iter()
                .filter_map(|f| f.strip_prefix(tree).ok())
                .collect::<Vec<_>>(),
        )
        .output()
        .context("running md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed_kib(tree: &Path) -> Result<u64> {
    let mut files = Vec::new();
    walk(tree, &mut files)?;
    let mut bytes = 0;
    for f in files {
        bytes += std::fs::metadata(&f)?.len().div_ceil(1024) * 1024;
    }
    Ok(bytes / 1024)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// The path of `abs` (an absolute path on the target) inside `tree`, with
/// its directories made 0755.
fn place(tree: &Path, abs: &str) -> Result<PathBuf> {
    let to = tree.join(abs.trim_start_matches('/'));
    if let Some(parent) = to.parent() {
        mkdirs(tree, parent)?;
    }
    Ok(to)
}

/// `dir` and its parents up to `tree`, each 0755 whatever the umask.
fn mkdirs(tree: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut d = dir;
    while d.starts_with(tree) {
        set_mode(d, 0o755)?;
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

fn write(p: &Path, text: &str) -> Result<()> {
    std::fs::write(p, text).with_context(|| format!("write {}", p.display()))?;
    set_mode(p, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packaged_source_file_exists() {
        for (from, _, _) in FILES {
            assert!(root().join(from).is_file(), "{from}");
        }
        for s in SCRIPTS {
            let p = root().join("dist/deb").join(s);
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(text.starts_with("#!/bin/sh\n"), "{s}: POSIX sh");
            assert!(text.contains("\nset -e\n"), "{s}: set -e");
        }
    }

    #[test]
    fn the_conffile_is_in_etc_and_shipped() {
        assert!(CONFFILE.starts_with("/etc/"));
        assert!(FILES.iter().any(|(_, to, _)| *to == CONFFILE));
    }

    #[test]
    fn control_has_the_required_fields() {
        let c = control("1.2.3", "amd64", "libc6 (>= 2.34)", 42);
        for f in [
            "Package: screengate\n",
            "Version: 1.2.3\n",
            "Architecture: amd64\n",
            "Maintainer: ",
            "Installed-Size: 42\n",
            "Depends: libc6 (>= 2.34)\n",
            "Description: ",
        ] {
            assert!(c.contains(f), "{f} missing in:\n{c}");
        }
        // continuation lines of the description start with one space
        assert!(
            c.lines()
                .skip_while(|l| !l.starts_with("Description"))
                .skip(1)
                .all(|l| l.starts_with(' '))
        );
    }
}
