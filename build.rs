//! Release links of the `vendflow` binary fold identical functions (`--icf=all`): the dataflow
//! operators are generic, and many of their instances compile to the same machine code. With
//! the symbol table stripped (`[profile.release.package.vendflow]`), this keeps the binary under
//! 150 MB.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    }
}
