//! rqemu-nbd: a qemu-nbd compatible NBD server (see `rqemu::tools::qemu_nbd`).

/// mimalloc, as rqemu-io: requests allocate and free small blocks in bursts.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(rqemu::tools::qemu_nbd::main(args));
}
