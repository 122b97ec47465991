//! LUKS1 interoperability: images made by cryptsetup open in rqemu; images made by
//! rqemu-img pass `cryptsetup luksDump` and `cryptsetup open --test-passphrase`; and for
//! every cipher mode, a luks image and a qcow2 image with `encrypt.format=luks` made and
//! written by one of qemu-img/qemu-io and rqemu-img/rqemu-io read back identically through
//! the other, as do qcow2 images with the legacy AES encryption. Error paths (wrong
//! passphrase, missing secret, corrupt key slot) must print QEMU's messages.
//!
//! Skipped (with a printed reason) when the reference QEMU or cryptsetup is not installed;
//! with RQEMU_REQUIRE_QEMU=1 a missing tool is a failure.

use std::path::Path;

mod reference_tools;

use reference_tools::*;

const OURS_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");
const CRYPTSETUP: &str = "/usr/sbin/cryptsetup";
const SECRET: &str = "secret,id=sec0,data=letmein";

fn tools_available() -> bool {
    if !reference_available() {
        return false;
    }
    if Path::new(CRYPTSETUP).exists() {
        return true;
    }
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{CRYPTSETUP} is missing (Debian package cryptsetup-bin) and RQEMU_REQUIRE_QEMU=1");
    }
    eprintln!("skipping: {CRYPTSETUP} is not installed");
    false
}

/// Whether `name` is a qcow2 image (encrypted through `encrypt.*`) rather than a luks one.
fn is_qcow2(name: &str) -> bool {
    name.ends_with(".qcow2")
}

fn image_opts(name: &str) -> String {
    if is_qcow2(name) {
        format!("driver=qcow2,encrypt.key-secret=sec0,file.filename={name}")
    } else {
        format!("driver=luks,key-secret=sec0,file.filename={name}")
    }
}

/// Runs qemu-io style commands on a LUKS image with the passphrase secret.
fn io(bin: &str, dir: &Path, name: &str, cmds: &[&str]) -> std::process::Output {
    let opts = image_opts(name);
    let mut args = vec!["--object", SECRET, "--image-opts", &opts];
    for c in cmds {
        args.extend(["-c", c]);
    }
    run(bin, dir, &args)
}

/// Asserts that the commands succeed without any failed read (`-P` mismatches print
/// "Pattern verification failed").
fn io_ok(bin: &str, dir: &Path, name: &str, cmds: &[&str]) {
    let out = io(bin, dir, name, cmds);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("qemu-io:"),
        "{bin} {cmds:?} on {name}: {text}"
    );
}

/// Creates a 4 MiB image with the LUKS options `opts` (`,key=value...`); a qcow2 image
/// takes them under `encrypt.`.
fn create(bin: &str, dir: &Path, name: &str, opts: &str) {
    let (fmt, o) = if is_qcow2(name) {
        let opts = opts.replace(',', ",encrypt.");
        let o = format!("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10{opts}");
        ("qcow2", o)
    } else {
        ("luks", format!("key-secret=sec0,iter-time=10{opts}"))
    };
    ok(
        bin,
        dir,
        &[
            "create", "-q", "-f", fmt, "--object", SECRET, "-o", &o, name, "4M",
        ],
    );
}

const WRITES: [&str; 3] = [
    "write -P 0x5a 0 64k",
    "write -P 0x33 1000 3000",
    "write -P 0x77 3M 1M",
];
const READS: [&str; 4] = [
    "read -P 0x5a 0 1000",
    "read -P 0x33 1000 3000",
    "read -P 0x5a 4000 61536",
    "read -P 0x77 3M 1M",
];

/// The cipher modes QEMU offers for LUKS, as `-o` suffixes.
const MODES: [&str; 6] = [
    "",
    ",cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain64",
    ",cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1",
    ",cipher-alg=aes-192,cipher-mode=xts,ivgen-alg=plain,hash-alg=sha512",
    ",cipher-alg=twofish-256,cipher-mode=xts,hash-alg=sha384",
    ",cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=ripemd160",
];

/// For each mode, an image (named `*.ext`) made and written by one pair of tools reads
/// back identically through the other, and both tools describe it alike.
fn modes_in_both_directions(ext: &str) {
    if !tools_available() {
        return;
    }
    let dir = scratch(&format!("modes-{ext}"));
    // Creation times PBKDF2 for about a second per image: run the modes side by side.
    std::thread::scope(|s| {
        for (i, mode) in MODES.iter().enumerate() {
            for (maker, writer, reader) in [(QEMU_IMG, QEMU_IO, OURS_IO), (OURS, OURS_IO, QEMU_IO)]
            {
                let dir = &dir;
                s.spawn(move || {
                    let who = if maker == OURS { "ours" } else { "ref" };
                    let name = format!("m{i}-{who}.{ext}");
                    create(maker, dir, &name, mode);
                    io_ok(writer, dir, &name, &WRITES);
                    io_ok(reader, dir, &name, &READS);
                });
            }
        }
    });
    let name = format!("m2-ref.{ext}");
    let a = run(OURS, &dir, &["info", &name]);
    let b = run(QEMU_IMG, &dir, &["info", &name]);
    assert_eq!(
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
    // The check of a written qcow2 image finds every cluster accounted for (luks has no
    // check).
    let opts = image_opts(&format!("m2-ours.{ext}"));
    let checkers = if ext == "qcow2" {
        &[OURS, QEMU_IMG][..]
    } else {
        &[]
    };
    for &bin in checkers {
        ok(
            bin,
            &dir,
            &["check", "--object", SECRET, "--image-opts", &opts],
        );
    }
}

#[test]
fn each_mode_reads_identically_in_both_directions() {
    modes_in_both_directions("luks");
}

#[test]
fn qcow2_luks_each_mode_reads_identically_in_both_directions() {
    modes_in_both_directions("qcow2");
}

#[test]
fn qcow2_aes_images_read_identically_in_both_directions() {
    if !tools_available() {
        return;
    }
    let dir = scratch("qcow2-aes");
    let opts = "encryption=on,encrypt.key-secret=sec0";
    for (maker, writer, reader) in [(QEMU_IMG, QEMU_IO, OURS_IO), (OURS, OURS_IO, QEMU_IO)] {
        let name = format!("a-{}.qcow2", if maker == OURS { "ours" } else { "ref" });
        let args = [
            "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", opts, &name, "4M",
        ];
        ok(maker, &dir, &args);
        io_ok(writer, &dir, &name, &WRITES);
        io_ok(reader, &dir, &name, &READS);
        // Converted out, both give the same plain image.
        let img_opts = image_opts(&name);
        for (bin, out) in [(OURS, "ours.raw"), (QEMU_IMG, "ref.raw")] {
            let args = [
                "convert",
                "--object",
                SECRET,
                "--image-opts",
                &img_opts,
                "-O",
                "raw",
                out,
            ];
            ok(bin, &dir, &args);
        }
        assert!(
            std::fs::read(dir.join("ours.raw")).unwrap()
                == std::fs::read(dir.join("ref.raw")).unwrap()
        );
    }
}

fn luks_format(dir: &Path, name: &str, args: &[&str]) {
    std::fs::write(dir.join("key"), "letmein").unwrap();
    let f = std::fs::File::create(dir.join(name)).unwrap();
    f.set_len(8 << 20).unwrap();
    let mut all = vec![
        "luksFormat",
        "-q",
        "--type",
        "luks1",
        "--key-file",
        "key",
        "--pbkdf-force-iterations",
        "1000",
    ];
    all.extend_from_slice(args);
    all.push(name);
    ok(CRYPTSETUP, dir, &all);
}

#[test]
fn cryptsetup_images_open_in_ours() {
    if !tools_available() {
        return;
    }
    let dir = scratch("from-cryptsetup");
    let specs: [&[&str]; 3] = [
        &["-c", "aes-xts-plain64", "-s", "512", "-h", "sha256"],
        &["-c", "aes-cbc-essiv:sha256", "-s", "256", "-h", "sha1"],
        &["-c", "aes-cbc-plain", "-s", "128", "-h", "sha512"],
    ];
    for (i, spec) in specs.iter().enumerate() {
        let name = format!("c{i}.luks");
        luks_format(&dir, &name, spec);
        io_ok(QEMU_IO, &dir, &name, &WRITES);
        io_ok(OURS_IO, &dir, &name, &READS);
        io_ok(OURS_IO, &dir, &name, &["write -P 0x44 2M 4k"]);
        io_ok(QEMU_IO, &dir, &name, &["read -P 0x44 2M 4k"]);
    }
}

#[test]
fn our_images_pass_cryptsetup() {
    if !tools_available() {
        return;
    }
    let dir = scratch("to-cryptsetup");
    std::fs::write(dir.join("key"), "letmein").unwrap();
    std::fs::write(dir.join("wrong"), "letmeout").unwrap();
    for (i, (mode, spec)) in [("", "xts-plain64"), (MODES[2], "cbc-essiv:sha256")]
        .into_iter()
        .enumerate()
    {
        let name = format!("o{i}.luks");
        create(OURS, &dir, &name, mode);
        let dump = run(CRYPTSETUP, &dir, &["luksDump", &name]);
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.status.success(), "luksDump: {text}");
        assert!(text.contains(spec), "{text}");
        assert!(text.contains("Key Slot 0: ENABLED"), "{text}");
        let test = |key: &str| {
            run(
                CRYPTSETUP,
                &dir,
                &["open", "--test-passphrase", "--key-file", key, &name],
            )
            .status
            .success()
        };
        assert!(
            test("key"),
            "cryptsetup refuses the right passphrase for {name}"
        );
        assert!(
            !test("wrong"),
            "cryptsetup accepts a wrong passphrase for {name}"
        );
    }
}

/// The first stderr line of each tool, program names aside, must agree.
fn same_error(dir: &Path, args: &[&str]) -> String {
    let ours = run(OURS_IO, dir, args);
    let theirs = run(QEMU_IO, dir, args);
    let first = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        !theirs.status.success() && !ours.status.success(),
        "{args:?}"
    );
    assert_eq!(first(&ours), first(&theirs), "{args:?}");
    first(&ours)
}

#[test]
fn error_paths_print_qemus_messages() {
    if !tools_available() {
        return;
    }
    let dir = scratch("errors");
    create(OURS, &dir, "e.luks", "");
    let opts = image_opts("e.luks");
    let wrong = same_error(
        &dir,
        &[
            "--object",
            "secret,id=sec0,data=nope",
            "--image-opts",
            &opts,
            "-c",
            "quit",
        ],
    );
    assert!(
        wrong.contains("Invalid password, cannot unlock any keyslot"),
        "{wrong}"
    );
    let missing = same_error(&dir, &["--image-opts", &opts, "-c", "quit"]);
    assert!(missing.contains("No secret with id 'sec0'"), "{missing}");
    let no_key = same_error(&dir, &["-f", "luks", "e.luks", "-c", "quit"]);
    assert!(
        no_key.contains("Parameter 'key-secret' is required"),
        "{no_key}"
    );
    // Slot 0's stripe count lives at 208 + 44.
    let mut bytes = std::fs::read(dir.join("e.luks")).unwrap();
    bytes[252..256].copy_from_slice(&3999u32.to_be_bytes());
    std::fs::write(dir.join("e.luks"), bytes).unwrap();
    let corrupt = same_error(
        &dir,
        &["--object", SECRET, "--image-opts", &opts, "-c", "quit"],
    );
    assert!(
        corrupt.contains("Keyslot 0 is corrupted (stripes 3999 != 4000)"),
        "{corrupt}"
    );
}

#[test]
fn qcow2_error_paths_print_qemus_messages() {
    if !tools_available() {
        return;
    }
    let dir = scratch("qcow2-errors");
    create(OURS, &dir, "e.qcow2", "");
    let opts = image_opts("e.qcow2");
    let wrong = same_error(
        &dir,
        &[
            "--object",
            "secret,id=sec0,data=nope",
            "--image-opts",
            &opts,
            "-c",
            "quit",
        ],
    );
    assert!(
        wrong.contains("Invalid password, cannot unlock any keyslot"),
        "{wrong}"
    );
    let missing = same_error(&dir, &["--image-opts", &opts, "-c", "quit"]);
    assert!(missing.contains("No secret with id 'sec0'"), "{missing}");
    let no_key = same_error(&dir, &["-f", "qcow2", "e.qcow2", "-c", "quit"]);
    assert!(
        no_key.contains("Parameter 'encrypt.key-secret' is required"),
        "{no_key}"
    );
    // The LUKS header pointer is the first extension: its offset sits at 120.
    let mut bytes = std::fs::read(dir.join("e.qcow2")).unwrap();
    let area = u64::from_be_bytes(bytes[120..128].try_into().unwrap()) as usize;
    bytes[area + 252..area + 256].copy_from_slice(&3999u32.to_be_bytes());
    std::fs::write(dir.join("e.qcow2"), bytes).unwrap();
    let corrupt = same_error(
        &dir,
        &["--object", SECRET, "--image-opts", &opts, "-c", "quit"],
    );
    assert!(
        corrupt.contains("Keyslot 0 is corrupted (stripes 3999 != 4000)"),
        "{corrupt}"
    );
}
