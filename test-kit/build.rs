//! Tells the kit which target triple it (and so the workspace's `toru`) was built for
//! (`package::HOST_TRIPLE`): packages built for tests name their entry for this triple.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=TORU_TEST_KIT_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
