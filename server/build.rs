//! Link options of the release binary that keep an idle server small (README, "Idle memory").
//!
//! - **Start-up code first** (`startup.ld`, written by `scripts/startup-layout`): the functions
//!   a server runs to start and then idle are placed together at the front of the code, instead
//!   of among the 25 MB of code it may never run. The kernel maps a binary's code 64 KiB around
//!   each page a process touches, so scattered start-up code kept 10 MiB of the binary resident.
//!   The script lists sections by name with the symbols' hashes as wildcards, so it still applies
//!   after a dependency or the compiler changes; a function it no longer names simply keeps its
//!   usual place.
//! - **Packed relative relocations** (`-z pack-relative-relocs`, glibc 2.36 and later): the
//!   table of addresses the loader fixes up at start is a few KiB instead of 1 MB, all of which
//!   it read.
//!
//! Only for release builds (`cargo build --release`, `cargo install`, the benches) on Linux with
//! glibc and the toolchain's own linker; a build that names another linker gets neither.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=startup.ld");
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo::rerun-if-env-changed=GANTRY_STARTUP_LAYOUT");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let gnu_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if var("PROFILE") != "release" || !gnu_linux || names_a_linker(&var("CARGO_ENCODED_RUSTFLAGS")) {
        return;
    }
    if var("HOST") == var("TARGET") && glibc_has_relr() {
        println!("cargo::rustc-link-arg-bin=gantry=-Wl,-z,pack-relative-relocs");
    }
    // `scripts/startup-layout` profiles a build without the layout: valgrind names only the
    // functions of a `.text` section.
    if var("GANTRY_STARTUP_LAYOUT") == "off" {
        return;
    }
    let script = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("startup.ld");
    // The compiler driver hands `-T FILE` to the linker as is (`-Wl,` would split a path at commas).
    println!("cargo::rustc-link-arg-bin=gantry=-T");
    println!("cargo::rustc-link-arg-bin=gantry={}", script.display());
}

/// Whether the build chose its own linker (a `linker` setting or linker flags), which may not
/// take an augmenting linker script.
fn names_a_linker(encoded_rustflags: &str) -> bool {
    env::var_os("RUSTC_LINKER").is_some()
        || encoded_rustflags.split('\x1f').any(|flag| flag.contains("linker") || flag.contains("fuse-ld"))
}

/// Whether this machine's glibc (the one the binary is linked against) loads packed relative
/// relocations: 2.36 or later.
fn glibc_has_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else { return false };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 36)
}
