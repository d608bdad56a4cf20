//! Emits the `bpf_target_arch` cfg aya-ebpf needs (host arch) when the
//! builder did not pass it.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
