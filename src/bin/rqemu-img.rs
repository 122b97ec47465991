//! rqemu-img: the qemu-img compatible image tool. All the work is in
//! `rqemu::tools::qemu_img`; this file only hands it the command line and exits with its status.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(rqemu::tools::qemu_img::main(args));
}
