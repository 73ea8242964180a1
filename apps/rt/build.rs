//! Lets the linker find apps/user.ld: `-Tuser.ld` comes from
//! apps/.cargo/config.toml, and a link search path set here applies to every
//! binary that depends on this crate (a path is absolute, whatever the cwd).
fn main() {
    let apps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let apps = apps.canonicalize().unwrap_or(apps);
    println!("cargo:rustc-link-search=native={}", apps.display());
    println!("cargo:rerun-if-changed={}", apps.join("user.ld").display());
}
