//! `toru`: arguments → config → runtime → `toru::run`. Nothing else.
fn main() {}
