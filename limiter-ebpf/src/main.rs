//! limiter's kernel programs. The packet path lives in `xdp.rs`; the RST
//! reply it builds in `reply.rs`; maps in `maps.rs`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics atomics: see maps::fetch_add")]

mod floors;
mod maps;
mod reply;
mod sockops;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
