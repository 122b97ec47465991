//! rqemu-crash-explore: replays blklogwrites logs into crash images and judges them (see
//! `rqemu::tools::crash_explore`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(rqemu::tools::crash_explore::main(args));
}
