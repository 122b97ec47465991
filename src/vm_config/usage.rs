//! `rqemu -h` and `rqemu -version`: the usage text of what rqemu accepts, laid out like
//! qemu-system-x86_64's (QEMU generates its `help()` text in system/vl.c from qemu-options.hx).
//!
//! Only options rqemu parses are listed, with the values it accepts; a test checks the list
//! against the option tables of the parser so the two cannot drift apart.

/// `rqemu -version`: QEMU's two lines, naming the QEMU release rqemu follows.
pub fn version() -> String {
    format!(
        "rqemu emulator version {} (follows QEMU emulator version 10.0.2)\n\
         Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// One entry: the option as typed, and what it does.
const OPTIONS: &[(&str, &str)] = &[
    ("-h or -help", "display this help and exit"),
    ("-version", "display version information and exit"),
    (
        "-machine|-M [type=]pc|help",
        "the PC machine (i440FX + PIIX); 'help' lists it",
    ),
    (
        "-accel kvm",
        "KVM is the only accelerator (-enable-kvm is accepted too)",
    ),
    ("-enable-kvm", "accepted: KVM is always used"),
    ("-smp 1", "one vCPU"),
    ("-m [size=]MEGS[M|G]", "guest RAM, 2M to 16G (default 128M)"),
    (
        "-bios FILE",
        "the firmware image (default /usr/share/seabios/bios-256k.bin)",
    ),
    ("-kernel BZIMAGE", "boot a Linux kernel directly"),
    ("-initrd FILE", "initial ram disk for -kernel"),
    ("-append CMDLINE", "kernel command line for -kernel"),
    (
        "-boot [order=DRIVES][,once=DRIVES][,menu=on|off][,splash-time=MS][,reboot-timeout=MS]",
        "boot order (c disk, d CD-ROM), boot menu, and SeaBIOS's reboot timeout",
    ),
    (
        "-cdrom FILE",
        "an ATAPI CD-ROM on the secondary IDE master (index=2)",
    ),
    (
        "-drive file=F[,if=ide|virtio|none][,index=I][,format=FMT][,id=ID]",
        "a drive",
    ),
    (
        "",
        "also cache=, aio=threads|native|io_uring, readonly=, snapshot=, media=disk|cdrom",
    ),
    (
        "-blockdev driver=D,node-name=N,...",
        "a block node for -device ...,drive=N",
    ),
    (
        "-device ide-hd,drive=ID[,bus=ide.N][,unit=U]",
        "an IDE disk on an if=none drive",
    ),
    (
        "-device ide-cd,drive=ID[,bus=ide.N][,unit=U]",
        "an IDE CD-ROM on an if=none drive",
    ),
    (
        "-device virtio-blk-pci,drive=ID[,...]",
        "a virtio-blk disk on an if=none drive",
    ),
    (
        "-object secret,id=ID,data=S|file=F[,format=raw|base64]",
        "a secret, e.g. an encrypted drive's key-secret",
    ),
    ("-serial stdio|file:PATH|null|none", "the COM1 backend"),
    (
        "-debugcon stdio|file:PATH|null|none",
        "the port 0xe9 debug console backend",
    ),
    (
        "-nographic",
        "no display; serial on stdio unless -serial says otherwise",
    ),
    (
        "-display none, -vga none, -net none",
        "accepted: there is no display or network",
    ),
    ("-nodefaults", "accepted: there are no default devices"),
    ("-no-reboot", "exit instead of rebooting"),
    (
        "-trace [[enable=]PATTERN][,events=FILE][,file=FILE][,thread=on|off]",
        "trace events",
    ),
    (
        "",
        "'-trace help' lists the events; thread=on tags each line with its thread",
    ),
];

/// `rqemu -h`: usage, the disk_image shorthand, and one line per option.
pub fn usage() -> String {
    let mut s = format!(
        "{}usage: rqemu [options] [disk_image]\n\n\
         'disk_image' is a raw hard disk image for IDE hard disk 0\n\n\
         Options (a double dash works too: --help, --trace):\n",
        version()
            .lines()
            .next()
            .map(|l| format!("{l}\n"))
            .unwrap_or_default()
    );
    for (option, what) in OPTIONS {
        if option.len() < 28 {
            s.push_str(&format!("{option:<28}{what}\n"));
        } else {
            s.push_str(&format!("{option}\n{:<28}{what}\n", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lists_every_option_the_parser_accepts() {
        let text = usage();
        for name in super::super::WITH_ARG.iter().chain(super::super::FLAGS) {
            let listed = text
                .split(|c: char| c.is_whitespace() || c == '|' || c == ',')
                .any(|word| word == format!("-{name}"));
            assert!(listed, "-{name} is accepted but not in rqemu -h");
        }
    }
}

/// `-device help`: the device models a drive can be attached to, in QEMU's layout.
pub fn device_help() -> String {
    "Storage devices:\n\
     name \"ide-cd\", bus IDE, desc \"virtual IDE CD-ROM\"\n\
     name \"ide-hd\", bus IDE, desc \"virtual IDE disk\"\n\
     name \"virtio-blk-pci\", bus PCI, alias \"virtio-blk\"\n"
        .to_string()
}

/// `-drive format=help`: every block driver, on one line.
pub fn format_help() -> String {
    formats::register_all();
    let names = block::registry::driver_names().join(" ");
    format!("Supported formats: {names}\n")
}
