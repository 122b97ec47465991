//! rqemu's command line as scripts see it: `-machine help`, and QEMU-style errors with exit
//! status 1 for bad options and missing files, before any guest starts. None of these need
//! KVM: every check runs before /dev/kvm is opened.

use std::process::{Command, Output};

fn rqemu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rqemu"))
        .args(args)
        .output()
        .expect("run rqemu")
}

/// Asserts a failure with exactly `message` on stderr and nothing on stdout.
fn fails_with(args: &[&str], message: &str) {
    let out = rqemu(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{message}\n"),
        "{args:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn machine_help_lists_pc_as_alias_of_the_default() {
    for flag in ["-machine", "-M"] {
        let out = rqemu(&[flag, "help"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Supported machines are:");
        assert!(lines.contains(
            &"pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)"
        ));
        // qemu-iotests' testenv.py picks the default machine this way.
        let default = lines.iter().find(|l| l.contains(" (default)")).unwrap();
        assert!(default.starts_with("pc-i440fx-10.0 "));
    }
}

#[test]
fn bad_options_read_like_qemu() {
    fails_with(&["-foo"], "rqemu: -foo: invalid option");
    fails_with(&["-m"], "rqemu: -m: requires an argument");
    fails_with(
        &["-serial", "bogus"],
        "rqemu: -serial bogus: 'bogus' is not a valid char driver",
    );
    fails_with(
        &["-M", "q35"],
        "rqemu: -M q35: unsupported machine type: \"q35\"\nUse -machine help to list supported machines",
    );
    fails_with(
        &["-accel", "tcg2"],
        "rqemu: -accel tcg2: invalid accelerator tcg2",
    );
    fails_with(
        &["-trace", "x,bar=1"],
        "rqemu: -trace x,bar=1: Invalid parameter 'bar'",
    );
    fails_with(
        &["-device", "foo"],
        "rqemu: -device foo: 'foo' is not a valid device model name",
    );
}

#[test]
fn missing_files_read_like_qemu() {
    fails_with(
        &["-bios", "/nonexistent/bios.bin"],
        "rqemu: could not load PC BIOS '/nonexistent/bios.bin'",
    );
    fails_with(
        &["-kernel", "/nonexistent/vmlinuz"],
        "rqemu: could not open kernel file '/nonexistent/vmlinuz': No such file or directory",
    );
    fails_with(
        &["-drive", "file=/nonexistent/disk.img,if=none"],
        "rqemu: -drive file=/nonexistent/disk.img,if=none: Could not open '/nonexistent/disk.img': No such file or directory",
    );
    fails_with(
        &["-debugcon", "file:/nonexistent/log"],
        "rqemu: -debugcon file:/nonexistent/log: Could not open '/nonexistent/log': No such file or directory",
    );
}

#[test]
fn drive_options_are_checked_by_the_block_layer() {
    let img = std::env::temp_dir().join(format!("rqemu-cli-{}.raw", std::process::id()));
    std::fs::write(&img, vec![0u8; 65536]).unwrap();
    let p = img.display().to_string();
    let arg = format!("file={p},format=foo,if=none");
    fails_with(
        &["-drive", &arg],
        &format!("rqemu: -drive {arg}: Unknown driver 'foo'"),
    );
    let arg = format!("file={p},format=raw,if=none,bogus=1");
    fails_with(
        &["-drive", &arg],
        &format!("rqemu: -drive {arg}: Block format 'raw' does not support the option 'bogus'"),
    );
    std::fs::remove_file(&img).unwrap();
}

#[test]
fn virtio_blk_pci_options_are_checked() {
    let out = rqemu(&["-device", "virtio-blk-pci,drive=d0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Property 'virtio-blk-pci.drive' can't find value 'd0'"));
    let out = rqemu(&[
        "-drive",
        "file=/tmp/x.img,if=none,id=d0",
        "-device",
        "virtio-blk-pci,drive=d0,num-queues=2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only num-queues=1"));
}
