//! `cargo xtask package`: a .deb (dpkg-deb) and a .tar.gz of the same tree,
//! staged by `install` with prefix /usr, in target/package/.
//!
//! The .deb's config is a conffile (dpkg keeps an edited one), and its
//! maintainer scripts (config/debian/) hand shaping over on an upgrade: the
//! old daemon exits with `shaper stop --keep`, the new one is started and
//! takes the pinned state over, so traffic is never unshaped.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    exec,
    install::{self, output, Layout, CONFIG},
};

const SCRIPTS: [&str; 3] = ["prerm", "postinst", "postrm"];

/// Builds both packages from the release binary; returns their paths.
pub(crate) fn package(root: &Path, shaper: &Path) -> Result<Vec<PathBuf>> {
    let version = version(shaper)?;
    let arch =
        String::from_utf8(output(Command::new("dpkg").arg("--print-architecture"))?)?.trim().to_string();
    let out = root.join("target/package");
    let stage = out.join(format!("shaper_{version}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let layout = Layout { prefix: PathBuf::from("/usr"), destdir: Some(stage.clone()) };
    install::install(root, shaper, &layout)?;

    let tarball = out.join(format!("shaper-{version}-{arch}.tar.gz"));
    exec(
        Command::new("tar")
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&stage)
            .arg("."),
    )?;

    let debian = stage.join("DEBIAN");
    fs::create_dir(&debian).with_context(|| format!("creating {}", debian.display()))?;
    fs::set_permissions(&debian, fs::Permissions::from_mode(0o755))?;
    let control = control(&version, &arch, glibc_needed(shaper)?.as_deref(), installed_kib(&stage)?);
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("conffiles"), &format!("{CONFIG}\n"), 0o644)?;
    for script in SCRIPTS {
        let source = root.join("config/debian").join(script);
        let text = fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
        write(&debian.join(script), &text, 0o755)?;
    }
    let deb = out.join(format!("shaper_{version}_{arch}.deb"));
    exec(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb))?;
    Ok(vec![deb, tarball])
}

/// The version the binary reports (`shaper --version`: "shaper 0.1.0").
fn version(shaper: &Path) -> Result<String> {
    let text = String::from_utf8(output(Command::new(shaper).arg("--version"))?)?;
    text.split_whitespace().nth(1).map(str::to_string).context("`shaper --version` printed no version")
}

fn control(version: &str, arch: &str, glibc: Option<&str>, kib: u64) -> String {
    let depends = glibc.map_or_else(|| "libc6".to_string(), |v| format!("libc6 (>= {v})"));
    format!(
        "Package: shaper\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: shaper developers <shaper@invalid>\n\
         Installed-Size: {kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://github.com/shaper-rs/shaper\n\
         Description: traffic shaping by program, user, port and address (eBPF + HTB)\n \
         An eBPF classifier puts every packet of a connection into its HTB class\n \
         from the first packet, and a daemon keeps the classes, rules and flow\n \
         table up to date. Rules match programs, users, cgroups, ports and\n \
         addresses. Includes the systemd unit, man pages and shell completions.\n"
    )
}

/// The newest glibc symbol version the binary needs (e.g. "2.34"), from the
/// `GLIBC_x.y` names in its dynamic section.
fn glibc_needed(shaper: &Path) -> Result<Option<String>> {
    let bytes = fs::read(shaper).with_context(|| format!("reading {}", shaper.display()))?;
    let needle = b"GLIBC_";
    let mut newest: Option<(u32, u32)> = None;
    for start in bytes.windows(needle.len()).enumerate().filter(|(_, w)| w == needle).map(|(i, _)| i) {
        let rest = &bytes[start + needle.len()..];
        let end = rest.iter().position(|b| !(b.is_ascii_digit() || *b == b'.')).unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..end]);
        let mut parts = text.split('.').map(|p| p.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            newest = newest.max(Some((major, minor)));
        }
    }
    Ok(newest.map(|(major, minor)| format!("{major}.{minor}")))
}

/// The size of the staged tree in KiB, as dpkg counts Installed-Size.
fn installed_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        bytes += if meta.is_dir() {
            installed_kib(&entry.path())? * 1024
        } else {
            meta.len().div_ceil(1024) * 1024
        };
    }
    Ok(bytes / 1024)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
