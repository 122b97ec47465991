//! NBD over TLS with X.509 certificates, both ways: rqemu-nbd --tls-creds serving QEMU's
//! client, rqemu's client (rqemu-img, rqemu-nbd -L) against qemu-nbd and
//! `nbdkit --tls=require`, and plaintext clients refused by a TLS export. The
//! certificates are made here with certtool (Debian's gnutls-bin). Skips without the
//! reference tools (fails under RQEMU_REQUIRE_QEMU=1).

mod nbd_rig;
mod reference_tools;

use std::path::{Path, PathBuf};

use nbd_rig::{same, tools_available, transcript, Server, QEMU_NBD, RQEMU_NBD};
use reference_tools::{image, ok, run, scratch, OURS, QEMU_IMG};

const NBDKIT: &str = "/usr/bin/nbdkit";
const CERTTOOL: &str = "/usr/bin/certtool";

/// A CA named `ca` and a server and client certificate it signed, in QEMU's file names
/// under `dir`.
fn make_certificates(dir: &Path, ca: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_info = format!("cn = {ca}\nca\ncert_signing_key\nexpiration_days = 2\n");
    let templates = [
        ("ca.info", ca_info.as_str()),
        (
            "server.info",
            "organization = Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n",
        ),
        (
            "client.info",
            "organization = Test\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n",
        ),
    ];
    for (name, text) in templates {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let certtool = |args: &[&str]| ok(CERTTOOL, dir, args);
    for key in ["ca-key.pem", "server-key.pem", "client-key.pem"] {
        certtool(&["--generate-privkey", "--outfile", key]);
    }
    certtool(&[
        "--generate-self-signed",
        "--load-privkey",
        "ca-key.pem",
        "--template",
        "ca.info",
        "--outfile",
        "ca-cert.pem",
    ]);
    for who in ["server", "client"] {
        certtool(&[
            "--generate-certificate",
            "--load-privkey",
            &format!("{who}-key.pem"),
            "--load-ca-certificate",
            "ca-cert.pem",
            "--load-ca-privkey",
            "ca-key.pem",
            "--template",
            &format!("{who}.info"),
            "--outfile",
            &format!("{who}-cert.pem"),
        ]);
    }
}

/// A scratch directory with certificates under pki/ and a qcow2 image a.qcow2 holding
/// 0x42 in its first MiB; `None` (skip) without the tools.
fn setup(case: &str) -> Option<(PathBuf, PathBuf)> {
    if !tools_available(&[QEMU_IMG, QEMU_NBD, NBDKIT, CERTTOOL]) {
        return None;
    }
    let dir = scratch(case);
    let pki = dir.join("pki");
    make_certificates(&pki, "Test CA");
    image(&dir, "a.qcow2", "4M", None, &[(0x42, 0, 1 << 20)]);
    Some((dir, pki))
}

fn creds(dir: &Path, endpoint: &str) -> String {
    format!(
        "tls-creds-x509,id=tls0,dir={},endpoint={endpoint}",
        dir.display()
    )
}

/// The image-opts of a TLS client of the server at `socket`.
fn tls_opts(socket: &Path, hostname: &str) -> String {
    format!(
        "driver=nbd,server.type=unix,server.path={},tls-creds=tls0,tls-hostname={hostname}",
        socket.display()
    )
}

#[test]
fn our_client_speaks_tls_to_qemu_nbd_and_nbdkit() {
    let Some((dir, pki)) = setup("client") else {
        return;
    };
    let server_creds = creds(&pki, "server");
    let server = Server::start(
        QEMU_NBD,
        &dir,
        "q",
        &[
            "-t",
            "--object",
            &server_creds,
            "--tls-creds",
            "tls0",
            "-f",
            "qcow2",
            "a.qcow2",
        ],
    );
    let client = creds(&pki, "client");
    let sock = server.socket.clone();
    for args in [
        vec![
            "info",
            "--object",
            &client,
            "--image-opts",
            &tls_opts(&sock, "localhost"),
        ],
        vec![
            "map",
            "--output=json",
            "--object",
            &client,
            "--image-opts",
            &tls_opts(&sock, "localhost"),
        ],
        vec![
            "info",
            "--object",
            &client,
            "--image-opts",
            &tls_opts(&sock, "otherhost"),
        ],
        vec!["info", &server.uri()],
    ] {
        same(OURS, QEMU_IMG, &dir, &args, &sock);
    }
    let sock_text = sock.display().to_string();
    for args in [
        vec![
            "-L",
            "-k",
            &sock_text,
            "--object",
            &client,
            "--tls-creds",
            "tls0",
            "--tls-hostname",
            "localhost",
        ],
        vec!["-L", "-k", &sock_text],
    ] {
        same(RQEMU_NBD, QEMU_NBD, &dir, &args, &sock);
    }
    // A CA that did not sign the server's certificate.
    let other = dir.join("other");
    make_certificates(&other, "Other CA");
    let wrong = creds(&other, "client");
    let out = same(
        OURS,
        QEMU_IMG,
        &dir,
        &[
            "info",
            "--object",
            &wrong,
            "--image-opts",
            &tls_opts(&sock, "localhost"),
        ],
        &sock,
    );
    assert!(out.contains("hasn't got a known issuer"), "{out}");
    drop(server);

    let tls_dir = format!("--tls-certificates={}", pki.display());
    let kit = Server::start_with(
        NBDKIT,
        &dir,
        "kit",
        "-U",
        &["-f", "--tls=require", &tls_dir, "memory", "1M"],
    );
    let opts = tls_opts(&kit.socket, "localhost");
    ok(
        QEMU_IMG,
        &dir,
        &["info", "--object", &client, "--image-opts", &opts],
    );
    let out = same(
        OURS,
        QEMU_IMG,
        &dir,
        &[
            "map",
            "--output=json",
            "--object",
            &client,
            "--image-opts",
            &opts,
        ],
        &kit.socket,
    );
    assert!(out.contains("\"length\": 1048576"), "{out}");
    let plain = same(OURS, QEMU_IMG, &dir, &["info", &kit.uri()], &kit.socket);
    assert!(plain.contains("TLS negotiation required"), "{plain}");
}

#[test]
fn rqemu_nbd_serves_tls_and_refuses_plaintext_clients() {
    let Some((dir, pki)) = setup("server") else {
        return;
    };
    let server_creds = creds(&pki, "server");
    let client = creds(&pki, "client");
    let mut outputs = Vec::new();
    for bin in [QEMU_NBD, RQEMU_NBD] {
        let server = Server::start(
            bin,
            &dir,
            "s",
            &[
                "-t",
                "-r",
                "--object",
                &server_creds,
                "--tls-creds",
                "tls0",
                "-f",
                "qcow2",
                "a.qcow2",
            ],
        );
        let sock = server.socket.clone();
        let opts = tls_opts(&sock, "localhost");
        let mut seen = Vec::new();
        for args in [
            vec!["info", "--object", &client, "--image-opts", &opts],
            vec![
                "map",
                "--output=json",
                "--object",
                &client,
                "--image-opts",
                &opts,
            ],
            vec!["info", &server.uri()],
        ] {
            seen.push(transcript(QEMU_IMG, &dir, &args, &sock));
        }
        let sock_text = sock.display().to_string();
        seen.push(transcript(QEMU_NBD, &dir, &["-L", "-k", &sock_text], &sock));
        let io = run(
            "/usr/bin/qemu-io",
            &dir,
            &[
                "-r",
                "--object",
                &client,
                "--image-opts",
                &opts,
                "-c",
                "read -P 0x42 0 1M",
            ],
        );
        let io_out = String::from_utf8_lossy(&io.stdout).into_owned();
        assert!(io_out.contains("read 1048576/1048576"), "{bin}: {io_out}");
        outputs.push(seen);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "qemu-nbd (left) and rqemu-nbd (right) look different over TLS"
    );
}

/// TLS with pre-shared keys (iotest 233's tls-creds-psk) is refused by name, on both
/// sides: rustls has no TLS-PSK.
#[test]
fn psk_credentials_are_refused_with_a_clear_error() {
    let dir = scratch("nbd-tls-psk");
    std::fs::write(dir.join("keys.psk"), "qemu:0123456789abcdef\n").unwrap();
    let object = |endpoint: &str| {
        format!(
            "tls-creds-psk,id=tls0,dir={},endpoint={endpoint},username=qemu",
            dir.display()
        )
    };
    let server = object("server");
    let client = object("client");
    let runs = [
        run(
            RQEMU_NBD,
            &dir,
            &["--object", &server, "--tls-creds", "tls0", "t.qcow2"],
        ),
        run(
            OURS,
            &dir,
            &[
                "info",
                "--object",
                &client,
                "--image-opts",
                "driver=nbd,host=localhost,port=1,tls-creds=tls0",
            ],
        ),
    ];
    for out in runs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("Object type 'tls-creds-psk' is not supported by rqemu")
                && stderr.contains("TLS-PSK"),
            "{stderr}"
        );
    }
}
