//! rqemu-img: the qemu-img compatible image tool. All the work is in
//! `rqemu::tools::qemu_img`; this file only hands it the command line and exits with its status.

/// mimalloc instead of glibc's malloc: a request allocates a few small blocks (boxed
/// driver futures, completion callbacks) and frees them in bursts of a queue depth, which
/// overflows glibc's per-thread cache; measured at ~14% fewer instructions per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(rqemu::tools::qemu_img::main(args));
}
