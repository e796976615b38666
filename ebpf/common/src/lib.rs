//! Map key/value types shared by skiff's eBPF programs and the agent (`#[repr(C)]`, explicit
//! padding; the `user` feature adds `aya::Pod` impls for the user side).
//!
//! Empty until the eBPF service datapath lands.
#![no_std]
