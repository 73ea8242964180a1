//! Passes the linker script from bootloader/ with an absolute path (a relative
//! path in rustflags would depend on cargo's working directory).
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let boot = manifest.join("../bootloader");
    let script = boot.join("linker.ld");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!(
        "cargo:rerun-if-changed={}",
        boot.join("pvh_entry.S").display()
    );
}
