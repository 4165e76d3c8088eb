//! Tells the host which target triple it was built for (`TORU_HOST_TRIPLE`, read by
//! `package::manifest::HOST_TRIPLE`): a package's `[entry]` is looked up by this exact name.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=TORU_HOST_TRIPLE={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
