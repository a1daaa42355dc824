//! Builds the eBPF object from `shaper-ebpf` on the stable toolchain and leaves it in
//! OUT_DIR, where `src/ebpf.rs` embeds it, so the `shaper` binary is self-contained.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for `cargo check`/`clippy` without
//! bpf-linker); an empty object is written instead and loading it fails at run time.

use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("shaper-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        if !object.exists() {
            fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        }
        return Ok(());
    }
    // The eBPF crate needs `-Z build-std=core`, which stable cargo accepts only with
    // RUSTC_BOOTSTRAP=1. It is set for the child cargo that aya-build spawns, not for
    // this workspace's own crates.
    // SAFETY (edition 2021: safe fn): build scripts are single-threaded at this point.
    env::set_var("RUSTC_BOOTSTRAP", "1");
    let ebpf = aya_build::Package {
        name: "shaper-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../shaper-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom("stable")).context(
        "building the eBPF object failed; run `cargo xtask setup` once to install bpf-linker and rust-src",
    )?;
    let common = concat!(env!("CARGO_MANIFEST_DIR"), "/../shaper-common");
    println!("cargo:rerun-if-changed={common}");
    Ok(())
}
