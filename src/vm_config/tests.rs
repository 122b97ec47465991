use super::*;

fn parse(args: &[&str]) -> Result<Command, CliError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    parse_args(&args)
}

fn config(args: &[&str]) -> VmConfig {
    match parse(args) {
        Ok(Command::Run(cfg)) => *cfg,
        other => panic!("expected a config, got {other:?}"),
    }
}

fn error(args: &[&str]) -> String {
    parse(args).unwrap_err().to_string()
}

#[test]
fn defaults_match_qemu_pc() {
    let cfg = config(&[]);
    assert_eq!(cfg.ram_size, 128 << 20);
    assert_eq!(cfg.bios, PathBuf::from(DEFAULT_BIOS));
    assert_eq!(cfg.serial, CharBackend::Null);
    assert_eq!(cfg.boot_fail_wait(), -1);
}

#[test]
fn ram_sizes_default_to_mib_and_take_suffixes() {
    assert_eq!(config(&["-m", "512"]).ram_size, 512 << 20);
    assert_eq!(config(&["-m", "1G"]).ram_size, 1 << 30);
    assert_eq!(config(&["-m", "size=64M"]).ram_size, 64 << 20);
    assert!(error(&["-m", "abc"]).starts_with("-m abc: Parameter 'size' expects"));
    assert!(error(&["-m", "1"]).contains("not supported"));
}

#[test]
fn nographic_puts_serial_on_stdio_unless_given() {
    assert_eq!(config(&["-nographic"]).serial, CharBackend::Stdio);
    assert_eq!(
        config(&["-nographic", "-serial", "file:/tmp/x"]).serial,
        CharBackend::File(PathBuf::from("/tmp/x"))
    );
    assert_eq!(
        config(&["-serial", "none", "-nographic"]).serial,
        CharBackend::None
    );
    assert_eq!(
        error(&["-serial", "bogus"]),
        "-serial bogus: 'bogus' is not a valid char driver"
    );
}

#[test]
fn no_reboot_makes_seabios_give_up_at_once_unless_told_otherwise() {
    assert_eq!(config(&["-no-reboot"]).boot_fail_wait(), 0);
    let cfg = config(&["-no-reboot", "-boot", "reboot-timeout=1000"]);
    assert_eq!(cfg.boot_fail_wait(), 1000);
    assert!(error(&["-boot", "reboot-timeout=70000"]).contains("between -1 and 65535"));
}

#[test]
fn unknown_options_and_missing_arguments_read_like_qemu() {
    assert_eq!(error(&["-foo"]), "-foo: invalid option");
    assert_eq!(error(&["-m"]), "-m: requires an argument");
    assert_eq!(error(&["--nographic", "-bogus"]), "-bogus: invalid option");
    assert_eq!(config(&["disk.img"]).ide[0][0].as_deref(), Some("ide0-hd0"));
}

#[test]
fn machine_help_and_machine_types() {
    match parse(&["-machine", "help"]).unwrap() {
        Command::Print(text) => {
            assert!(text.starts_with("Supported machines are:\n"));
            assert!(text.contains(
                "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)\n"
            ));
            assert!(
                text.contains("pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)\n")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse(&["-M", "help"]), Ok(Command::Print(_))));
    config(&[
        "-M",
        "pc",
        "-machine",
        "type=pc,accel=kvm",
        "-enable-kvm",
        "-accel",
        "kvm",
    ]);
    assert_eq!(
        error(&["-M", "q35"]),
        "-M q35: unsupported machine type: \"q35\"\nUse -machine help to list supported machines"
    );
    assert_eq!(
        error(&["-accel", "tcg2"]),
        "-accel tcg2: invalid accelerator tcg2"
    );
}

#[test]
fn drives_if_none_are_accepted_with_their_options() {
    let cfg = config(&[
        "-drive",
        "file=/tmp/a.img,format=raw,if=none,id=d0,cache=none,aio=io_uring,readonly=on",
    ]);
    let d = &cfg.drives[0];
    assert_eq!(d.id, "d0");
    assert_eq!(d.interface, DriveInterface::None);
    assert_eq!(d.filename.as_deref(), Some("/tmp/a.img"));
    assert_eq!(d.options.get("driver"), Some("raw"));
    assert!(d.flags.read_only && d.flags.cache.direct);
    assert_eq!(d.flags.aio, block::node::AioMode::IoUring);
    let cfg = config(&[
        "-drive",
        "file=/tmp/a,if=none",
        "-drive",
        "file=/tmp/b,if=none",
    ]);
    assert_eq!(cfg.drives[1].id, "none1");
    assert!(error(&[
        "-drive",
        "file=a,if=none,id=x",
        "-drive",
        "file=b,if=none,id=x"
    ])
    .contains("Duplicate ID 'x'"));
}

#[test]
fn ide_drives_take_their_index_or_the_first_free_slot() {
    let cfg = config(&[
        "-drive",
        "file=/tmp/a.img,format=raw,index=3,snapshot=on",
        "-drive",
        "file=/tmp/b.img,if=ide",
        "-drive",
        "file=/tmp/c.img,if=ide,id=c",
    ]);
    assert_eq!(
        cfg.ide,
        [
            [Some("ide0-hd0".to_string()), Some("c".to_string())],
            [None, Some("ide1-hd1".to_string())]
        ]
    );
    assert!(cfg.drives[0].flags.snapshot);
    assert_eq!(cfg.drives[0].interface, DriveInterface::Ide);
    assert_eq!(
        error(&["-drive", "file=a,index=0", "-drive", "file=b,index=0"]),
        "-drive file=b,index=0: drive with bus=0, unit=0 (index=0) exists"
    );
    assert_eq!(
        error(&["-drive", "file=a,index=4"]),
        "-drive file=a,index=4: machine type does not support if=ide,bus=2,unit=0"
    );
    let four = [
        "-drive", "file=a", "-drive", "file=b", "-drive", "file=c", "-drive", "file=d",
    ];
    assert_eq!(config(&four).ide[1][1].as_deref(), Some("ide1-hd1"));
    let mut five = four.to_vec();
    five.extend(["-drive", "file=e"]);
    assert!(error(&five).contains("does not support if=ide,bus=2,unit=0"));
    assert_eq!(
        config(&["-drive", "file=a,bus=1,unit=0"]).ide[1][0].as_deref(),
        Some("ide1-hd0")
    );
}

#[test]
fn cdroms_come_from_cdrom_media_and_ide_cd_read_only() {
    let cfg = config(&["-drive", "file=a,media=cdrom", "-cdrom", "b,c.iso"]);
    assert_eq!(cfg.ide[0][0].as_deref(), Some("ide0-cd0"));
    assert_eq!(
        cfg.ide[1][0].as_deref(),
        Some("ide1-cd0"),
        "-cdrom is index 2"
    );
    assert_eq!(cfg.ide_cdrom, [[true, false], [true, false]]);
    assert_eq!(cfg.drives[1].filename.as_deref(), Some("b,c.iso"));
    assert!(cfg.drives.iter().all(|d| d.flags.read_only));
    let cfg = config(&[
        "-drive",
        "file=x.iso,if=none,id=cd",
        "-device",
        "ide-cd,drive=cd,bus=ide.0,unit=1",
    ]);
    assert!(cfg.ide_cdrom[0][1] && cfg.ide[0][1].as_deref() == Some("cd"));
    assert!(error(&["-device", "ide-cd,drive=nope"]).contains("'ide-cd.drive' can't find"));
    assert!(error(&["-drive", "file=a,if=virtio,media=cdrom"]).contains("only supported"));
    let cfg = config(&["-boot", "order=dc,menu=on", "-boot", "splash-time=500"]);
    assert_eq!(cfg.boot.order.as_deref(), Some("dc"));
    assert!(cfg.boot.menu);
    assert_eq!(cfg.boot.splash_time, Some(500));
    assert!(error(&["-boot", "order=z"]).contains("Invalid boot device 'z'"));
}

#[test]
fn ide_hd_devices_attach_if_none_drives() {
    let cfg = config(&[
        "-device",
        "ide-hd,drive=d1,bus=ide.1,unit=1",
        "-drive",
        "file=/tmp/a.img,if=none,id=d1",
        "-drive",
        "file=/tmp/b.img,if=none,id=d2",
        "-device",
        "ide-hd,drive=d2",
    ]);
    assert_eq!(cfg.ide[1][1].as_deref(), Some("d1"));
    assert_eq!(cfg.ide[0][0].as_deref(), Some("d2"));
    let d = ["-drive", "file=a,if=none,id=d"];
    let with = |dev: &'static str| [&d[..], &["-device", dev]].concat();
    assert_eq!(
        error(&with("ide-hd,drive=x")),
        "-device ide-hd,drive=x: Property 'ide-hd.drive' can't find value 'x'"
    );
    assert_eq!(error(&with("ide-hd")), "-device ide-hd: No drive specified");
    assert!(error(&with("ide-hd,drive=d,bus=ide.2")).ends_with("Bus 'ide.2' not found"));
    assert!(error(&with("ide-hd,drive=d,unit=2")).contains("bus supports only 2 units"));
    let twice = [&with("ide-hd,drive=d")[..], &["-device", "ide-hd,drive=d"]].concat();
    assert!(error(&twice).ends_with("can't take value 'd', it's in use"));
    let ide = ["-drive", "file=a,id=e", "-device", "ide-hd,drive=e"];
    assert!(error(&ide).ends_with("it's in use"));
    let taken = [
        "-drive",
        "file=a,index=0",
        "-drive",
        "file=b,if=none,id=d",
        "-device",
        "ide-hd,drive=d,bus=ide.0,unit=0",
    ];
    assert!(error(&taken).ends_with("IDE unit 0 is in use"));
}

#[test]
fn other_disk_devices_fail_clearly_until_they_exist() {
    assert_eq!(
        error(&["-drive", "file=x,if=scsi2"]),
        "-drive file=x,if=scsi2: unsupported bus type 'scsi2'"
    );
    assert_eq!(
        error(&["-device", "foo"]),
        "-device foo: 'foo' is not a valid device model name"
    );
}

#[test]
fn blockdev_needs_driver_and_node_name() {
    let cfg = config(&["-blockdev", "driver=file,filename=/tmp/a,node-name=n0"]);
    assert_eq!(cfg.drives[0].id, "n0");
    assert_eq!(cfg.drives[0].options.get("driver"), Some("file"));
    assert!(error(&["-blockdev", "filename=/tmp/a,node-name=n0"]).contains("'driver' is missing"));
    let json = r#"{"driver":"file","filename":"/tmp/a","node-name":"j"}"#;
    assert_eq!(config(&["-blockdev", json]).drives[0].id, "j");
}

#[test]
fn trace_patterns_are_checked() {
    config(&["-trace", "blk_*"]);
    assert_eq!(
        error(&["-trace", "foo,bar=1"]),
        "-trace foo,bar=1: Invalid parameter 'bar'"
    );
}

#[test]
fn initrd_and_append_need_a_kernel() {
    assert_eq!(
        error(&["-initrd", "x"]),
        "-initrd only allowed with -kernel option"
    );
    assert_eq!(
        error(&["-append", "quiet"]),
        "-append only allowed with -kernel option"
    );
    let cfg = config(&[
        "-append",
        "console=ttyS0",
        "-kernel",
        "bzImage",
        "-initrd",
        "rd",
    ]);
    assert_eq!(cfg.append, "console=ttyS0");
}

#[test]
fn virtio_blk_pci_devices_and_virtio_drives() {
    let cfg = config(&[
        "-device",
        "virtio-blk-pci,drive=d0,serial=S1,num-queues=1,disable-legacy=on,addr=05",
        "-drive",
        "file=/tmp/a.img,format=raw,if=none,id=d0",
        "-drive",
        "file=/tmp/b.img,if=virtio",
    ]);
    assert_eq!(cfg.virtio_disks.len(), 2);
    // -drive if=virtio makes its device at once, -device ones come after all drives.
    assert_eq!(cfg.virtio_disks[0].drive, cfg.drives[1].id);
    let d = &cfg.virtio_disks[1];
    assert_eq!(
        (d.drive.as_str(), d.serial.as_str(), d.slot),
        ("d0", "S1", Some(5))
    );
    assert!(d.transport.disable_legacy && !d.transport.disable_modern);
    assert_eq!(
        error(&["-device", "virtio-blk-pci,drive=d0"]),
        "-device virtio-blk-pci,drive=d0: Property 'virtio-blk-pci.drive' can't find value 'd0'"
    );
    let d0 = ["-drive", "file=/tmp/a.img,if=none,id=d0"];
    let with = |dev: &str| error(&[d0[0], d0[1], "-device", dev]);
    assert!(with("virtio-blk-pci,drive=d0,num-queues=4").contains("num-queues=4: multiqueue"));
    assert!(with("virtio-blk-pci").contains("drive property not set"));
    assert!(with("virtio-blk-pci,drive=d0,bogus=1").contains("'virtio-blk-pci.bogus' not found"));
    assert!(
        with("virtio-blk-pci,drive=d0,disable-legacy=on,disable-modern=on")
            .contains("neither modern nor legacy")
    );
    assert!(with("virtio-blk-pci,drive=d0,addr=1.1").contains("slots 02-1f"));
    let dev = "virtio-blk-pci,drive=d0";
    let twice = [&d0[..], &["-device", dev, "-device", dev]].concat();
    assert!(error(&twice).ends_with("can't take value 'd0', it's in use"));
    let ide = [
        &d0[..],
        &[
            "-device",
            "virtio-blk-pci,drive=d0",
            "-device",
            "ide-hd,drive=d0",
        ],
    ]
    .concat();
    assert!(error(&ide).ends_with("it's in use"));
}

#[test]
fn the_test_harness_command_line_is_understood() {
    let cfg = config(&[
        "-display",
        "none",
        "-vga",
        "none",
        "-chardev",
        "socket,id=mon,fd=5",
        "-mon",
        "chardev=mon,mode=control",
        "-chardev",
        "socket,id=qtest,fd=3",
        "-qtest",
        "chardev:qtest",
        "-accel",
        "qtest",
        "-nodefaults",
        "-S",
        "-qmp",
        "unix:/tmp/q.sock,server=on,wait=off",
        "-monitor",
        "none",
        "-object",
        "iothread,id=io0",
    ]);
    assert_eq!(cfg.accel, Accel::Qtest);
    assert!(cfg.start_paused);
    assert_eq!(cfg.qtest, Some(ChardevBackend::SocketFd(3)));
    assert_eq!(
        cfg.monitors,
        [
            MonitorConfig {
                backend: ChardevBackend::SocketFd(5),
                mode: MonitorMode::Control { pretty: false }
            },
            MonitorConfig {
                backend: ChardevBackend::SocketPath {
                    path: "/tmp/q.sock".into(),
                    server: true
                },
                mode: MonitorMode::Control { pretty: false }
            },
        ]
    );
    assert_eq!(cfg.iothreads, ["io0"]);
    assert_eq!(
        error(&["-incoming", "defer"]),
        "-incoming defer: migration is not supported by rqemu"
    );
    assert_eq!(
        error(&["-mon", "chardev=nope"]),
        "-mon chardev=nope: chardev \"nope\" not found"
    );
    assert!(parse(&["-object", "throttle-group,id=g"]).is_ok());
}

#[test]
fn a_cdrom_drive_may_be_empty_and_a_disk_may_not() {
    let cfg = config(&["-drive", "if=ide,media=cdrom"]);
    assert!(cfg.drives[0].empty);
    assert_eq!(cfg.drives[0].id, "ide0-cd0");
    assert!(error(&["-drive", "if=ide"]).contains("A block device must be specified"));
}

#[test]
fn scsi_disks_need_a_scsi_bus_and_a_drive() {
    let cfg = config(&[
        "-drive",
        "file=a,if=none,id=d0",
        "-device",
        "virtio-scsi,id=hba",
        "-device",
        "scsi-hd,id=disk0,drive=d0,bus=hba.0",
    ]);
    assert_eq!(cfg.scsi_buses[0].name, "hba.0");
    assert_eq!(cfg.scsi_disks[0].id, "disk0");
    assert_eq!(cfg.scsi_disks[0].iothread, None);
    let cfg = config(&[
        "-object",
        "iothread,id=io-scsi",
        "-drive",
        "file=a,if=none,id=d0",
        "-device",
        "virtio-scsi,id=hba,iothread=io-scsi",
        "-device",
        "scsi-hd,drive=d0,share-rw=on",
    ]);
    assert_eq!(cfg.scsi_disks[0].iothread.as_deref(), Some("io-scsi"));
    let no_thread = error(&["-device", "virtio-scsi,iothread=nope"]);
    assert!(no_thread.contains("can't find value 'nope'"), "{no_thread}");
    let no_bus = error(&[
        "-drive",
        "file=a,if=none,id=d0",
        "-device",
        "scsi-hd,drive=d0",
    ]);
    assert!(no_bus.contains("No 'SCSI' bus"), "{no_bus}");
    let wrong_bus = error(&[
        "-drive",
        "file=a,if=none,id=d0",
        "-device",
        "virtio-scsi",
        "-device",
        "scsi-hd,drive=d0,bus=x.0",
    ]);
    assert!(wrong_bus.contains("Bus 'x.0' not found"), "{wrong_bus}");
}

#[test]
fn error_policies_come_from_drives_and_devices() {
    use block::error_action::OnError;
    let cfg = config(&["-drive", "file=/tmp/a,if=ide,werror=stop,rerror=ignore"]);
    assert_eq!(cfg.drives[0].on_error, (OnError::Ignore, OnError::Stop));
    let cfg = config(&["-drive", "file=/tmp/a,if=ide"]);
    assert_eq!(cfg.drives[0].on_error, (OnError::Auto, OnError::Auto));
    // A device's policy overrides the drive's; `auto` keeps it.
    let cfg = config(&[
        "-drive",
        "file=/tmp/a,if=none,id=d0,werror=report,rerror=stop",
        "-device",
        "virtio-blk-pci,drive=d0,werror=ignore,rerror=auto",
    ]);
    assert_eq!(cfg.drives[0].on_error, (OnError::Stop, OnError::Ignore));
    let cfg = config(&[
        "-drive",
        "file=/tmp/a,if=none,id=d0",
        "-device",
        "ide-hd,drive=d0,werror=enospc,rerror=report",
    ]);
    assert_eq!(cfg.drives[0].on_error, (OnError::Report, OnError::Enospc));
    assert!(error(&["-drive", "file=/tmp/a,rerror=enospc"])
        .contains("'enospc' invalid read error action"));
    assert!(
        error(&["-drive", "file=/tmp/a,werror=auto"]).contains("'auto' invalid write error action")
    );
    assert!(error(&[
        "-drive",
        "file=/tmp/a,if=none,id=d0",
        "-device",
        "virtio-blk-pci,drive=d0,werror=bogus"
    ])
    .contains("Property 'virtio-blk-pci.werror' doesn't take value 'bogus'"));
}
