//! rqemu-io: a qemu-io compatible block layer exerciser (see `rqemu::tools::qemu_io`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(rqemu::tools::qemu_io::main(args));
}
