//! The workloads the explorer replays: qemu-io command scripts and qemu-img commands run
//! through blklogwrites on qcow2 (every feature whose metadata updates must be ordered) and
//! on the other writable formats (vhdx: its metadata log), each in the format variants it
//! applies to.
//!
//! Every step is a separate tool run (its close flushes), so the log's entry count after a
//! step marks a point where everything the step wrote is durable. No step writes a guest
//! sector twice, so a crash inside a step leaves each sector at its old or its new value.

/// One step of a workload; in an argument list `{}` stands for the `--image-opts` spec of
/// the logged image, `FMT` for the format and a leading `DIR` for the workload's directory.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// qemu-io commands in one run on the logged image.
    Io(&'static [&'static str]),
    /// A qemu-img command line.
    Img(&'static [&'static str]),
    /// qemu-io commands on another image of the workload (not logged): `(file, commands)`.
    Other(&'static str, &'static [&'static str]),
}

/// A workload before it is paired with a format variant.
#[derive(Clone, Copy, Debug)]
pub struct Body {
    /// Short name for the report.
    pub name: &'static str,
    /// Extra `qemu-img create -o` options.
    pub options: &'static str,
    /// Guest size at creation.
    pub size: &'static str,
    /// Images made before the workload, in the variant's format, each filled by QEMU's
    /// qemu-io commands: `(file, commands)`; the last is the backing file of `disk.img`.
    pub backing: &'static [(&'static str, &'static [&'static str])],
    /// The file under test is the backing file (qemu-img commit writes there).
    pub log_backing: bool,
    /// The steps.
    pub steps: &'static [Step],
}

/// A format variant: `(name, format, qemu-img create -o options)`.
pub type Variant = (&'static str, &'static str, &'static str);

/// What most workloads share: a 4 MiB image of the variant's own options, no backing file.
const PLAIN: Body = Body {
    name: "",
    options: "",
    size: "4M",
    backing: &[],
    log_backing: false,
    steps: &[],
};

const V2: Variant = ("v2", "qcow2", "compat=0.10");
const V3: Variant = ("v3", "qcow2", "compat=1.1");
const LAZY: Variant = ("v3-lazy", "qcow2", "compat=1.1,lazy_refcounts=on");
const EXTL2: Variant = ("v3-extl2", "qcow2", "compat=1.1,extended_l2=on");

const COW: Body = Body {
    name: "alloc-cow",
    backing: &[("base.img", &["write -P 0x5a 0 4M"])],
    steps: &[
        Step::Io(&[
            "write -P 1 4k 4k",
            "write -P 2 70k 8k",
            "flush",
            "write -P 3 128k 192k",
            "aio_write -P 4 1M 4k",
            "aio_write -P 5 2M 64k",
            "aio_flush",
        ]),
        Step::Io(&["write -P 6 3M 4k", "write -P 7 5k 1k", "write -P 8 1M 256k"]),
    ],
    ..PLAIN
};

const COMPRESSED: Body = Body {
    name: "compressed",
    steps: &[
        Step::Io(&[
            "write -c -P 1 0 64k",
            "write -c -P 2 64k 64k",
            "write -c -P 3 1M 64k",
        ]),
        Step::Io(&["write -P 4 4k 4k", "write -c -P 5 2M 64k"]),
        Step::Io(&["discard 64k 64k", "write -c -P 6 3M 64k"]),
    ],
    ..PLAIN
};

const DISCARD: Body = Body {
    name: "discard-zero",
    steps: &[
        Step::Io(&["write -P 1 0 1M", "write -P 2 2M 256k"]),
        Step::Io(&[
            "discard 64k 128k",
            "write -z 256k 64k",
            "write -z -u 512k 128k",
            "flush",
            "write -P 3 2M 4k",
        ]),
        Step::Io(&["write -P 4 64k 4k", "discard 0 64k", "write -z 2M 256k"]),
    ],
    ..PLAIN
};

const GROWTH: Body = Body {
    name: "growth",
    options: "cluster_size=512,refcount_bits=64",
    steps: &[
        Step::Io(&["write -P 1 0 1M"]),
        Step::Io(&["write -P 2 1M 1M", "write -P 3 3M 512k"]),
        Step::Img(&["resize", "--image-opts", "{}", "8M"]),
        Step::Io(&["write -P 4 7M 64k", "write -P 5 2M 512k"]),
    ],
    ..PLAIN
};

const SNAPSHOT: Body = Body {
    name: "snapshot",
    steps: &[
        Step::Io(&["write -P 1 0 256k", "write -c -P 2 1M 64k"]),
        Step::Img(&["snapshot", "--image-opts", "-c", "s1", "{}"]),
        Step::Io(&["write -P 3 64k 128k", "write -P 4 1M 4k"]),
        Step::Img(&["snapshot", "--image-opts", "-c", "s2", "{}"]),
        Step::Io(&["write -P 5 0 64k", "discard 192k 64k"]),
        Step::Img(&["snapshot", "--image-opts", "-a", "s1", "{}"]),
        Step::Img(&["snapshot", "--image-opts", "-d", "s2", "{}"]),
        Step::Io(&["write -P 6 128k 64k"]),
        Step::Img(&["snapshot", "--image-opts", "-d", "s1", "{}"]),
    ],
    ..PLAIN
};

const AMEND: Body = Body {
    name: "amend",
    steps: &[
        Step::Io(&["write -P 1 0 512k", "write -c -P 2 1M 64k"]),
        Step::Img(&["amend", "--image-opts", "-o", "refcount_bits=64", "{}"]),
        Step::Io(&["write -P 3 2M 128k"]),
        Step::Img(&["amend", "--image-opts", "-o", "lazy_refcounts=on", "{}"]),
        Step::Io(&["write -P 4 3M 64k"]),
        Step::Img(&["amend", "--image-opts", "-o", "lazy_refcounts=off", "{}"]),
        Step::Img(&[
            "amend",
            "--image-opts",
            "-o",
            "compat=0.10,refcount_bits=16",
            "{}",
        ]),
        Step::Img(&["amend", "--image-opts", "-o", "compat=1.1", "{}"]),
    ],
    ..PLAIN
};

/// Persistent dirty bitmaps: the bitmap directory, tables and data written at close and by
/// qemu-img bitmap, and the in-use flag a writer sets at open, between guest writes.
const BITMAPS: Body = Body {
    name: "bitmaps",
    steps: &[
        Step::Io(&["write -P 1 0 256k"]),
        Step::Img(&["bitmap", "--image-opts", "--add", "{}", "b0"]),
        Step::Io(&["write -P 2 64k 128k", "write -P 3 1M 64k"]),
        Step::Img(&["bitmap", "--image-opts", "--add", "-g", "128k", "{}", "b1"]),
        Step::Io(&["write -P 4 2M 64k", "discard 0 64k"]),
        Step::Img(&["bitmap", "--image-opts", "--disable", "{}", "b0"]),
        Step::Img(&["bitmap", "--image-opts", "--merge", "b0", "{}", "b1"]),
        Step::Img(&["bitmap", "--image-opts", "--remove", "{}", "b0"]),
        Step::Io(&["write -P 5 3M 64k"]),
    ],
    ..PLAIN
};

const COMMIT: Body = Body {
    name: "commit",
    backing: &[("base.img", &["write -P 1 0 1M", "write -c -P 2 2M 64k"])],
    log_backing: true,
    steps: &[
        Step::Other("disk.img", &["write -P 3 64k 128k", "write -P 4 3M 64k"]),
        Step::Img(&["commit", "--image-opts", "{}"]),
        Step::Other("disk.img", &["write -P 5 512k 64k", "write -z 1M 64k"]),
        Step::Img(&["commit", "--image-opts", "{}"]),
    ],
    ..PLAIN
};

const REBASE: Body = Body {
    name: "rebase",
    backing: &[
        ("new.img", &["write -P 7 0 2M"]),
        ("base.img", &["write -P 1 0 1M", "write -P 2 2M 1M"]),
    ],
    steps: &[
        Step::Io(&["write -P 3 512k 64k"]),
        // QEMU resolves no relative backing name against an --image-opts spec.
        Step::Img(&[
            "rebase",
            "--image-opts",
            "-b",
            "DIR/new.img",
            "-F",
            "FMT",
            "{}",
        ]),
        Step::Io(&["write -P 4 1M 64k"]),
        Step::Img(&["rebase", "--image-opts", "-b", "", "{}"]),
    ],
    ..PLAIN
};

/// Long epochs: a dozen whole-cluster writes in flight between flushes (no copy-on-write,
/// so nothing orders them), so that crash states (subsets of an epoch's data writes and of
/// the L2 and refcount updates they cause) are many and distinct.
const SCATTER: Body = Body {
    name: "scatter",
    size: "16M",
    steps: &[
        Step::Io(&[
            "aio_write -P 16 0k 128k",
            "aio_write -P 17 128k 64k",
            "aio_write -P 18 256k 64k",
            "aio_write -P 19 384k 128k",
            "aio_write -P 20 512k 64k",
            "aio_write -P 21 640k 64k",
            "aio_write -P 22 768k 128k",
            "aio_write -P 23 896k 64k",
            "aio_write -P 24 1024k 64k",
            "aio_write -P 25 1152k 128k",
            "aio_write -P 26 1280k 64k",
            "aio_write -P 27 1408k 64k",
            "aio_flush",
            "aio_write -P 28 1536k 128k",
            "aio_write -P 29 1664k 64k",
            "aio_write -P 30 1792k 64k",
            "aio_write -P 31 1920k 128k",
            "aio_write -P 32 2048k 64k",
            "aio_write -P 33 2176k 64k",
            "aio_write -P 34 2304k 128k",
            "aio_write -P 35 2432k 64k",
            "aio_write -P 36 2560k 64k",
            "aio_write -P 37 2688k 128k",
            "aio_write -P 38 2816k 64k",
            "aio_write -P 39 2944k 64k",
            "aio_flush",
            "aio_write -P 40 3072k 128k",
            "aio_write -P 41 3200k 64k",
            "aio_write -P 42 3328k 64k",
            "aio_write -P 43 3456k 128k",
            "aio_write -P 44 3584k 64k",
            "aio_write -P 45 3712k 64k",
            "aio_write -P 46 3840k 128k",
            "aio_write -P 47 3968k 64k",
            "aio_write -P 48 4096k 64k",
            "aio_write -P 49 4224k 128k",
            "aio_write -P 50 4352k 64k",
            "aio_write -P 51 4480k 64k",
            "aio_flush",
        ]),
        Step::Io(&[
            "aio_write -P 64 8192k 128k",
            "aio_write -P 65 8320k 64k",
            "aio_write -P 66 8448k 64k",
            "aio_write -P 67 8576k 128k",
            "aio_write -P 68 8704k 64k",
            "aio_write -P 69 8832k 64k",
            "aio_write -P 70 8960k 128k",
            "aio_write -P 71 9088k 64k",
            "aio_write -P 72 9216k 64k",
            "aio_write -P 73 9344k 128k",
            "aio_write -P 74 9472k 64k",
            "aio_write -P 75 9600k 64k",
            "aio_flush",
            "aio_write -P 76 9728k 128k",
            "aio_write -P 77 9856k 64k",
            "aio_write -P 78 9984k 64k",
            "aio_write -P 79 10112k 128k",
            "aio_write -P 80 10240k 64k",
            "aio_write -P 81 10368k 64k",
            "aio_write -P 82 10496k 128k",
            "aio_write -P 83 10624k 64k",
            "aio_write -P 84 10752k 64k",
            "aio_write -P 85 10880k 128k",
            "aio_write -P 86 11008k 64k",
            "aio_write -P 87 11136k 64k",
            "aio_flush",
            "aio_write -P 88 11264k 128k",
            "aio_write -P 89 11392k 64k",
            "aio_write -P 90 11520k 64k",
            "aio_write -P 91 11648k 128k",
            "aio_write -P 92 11776k 64k",
            "aio_write -P 93 11904k 64k",
            "aio_write -P 94 12032k 128k",
            "aio_write -P 95 12160k 64k",
            "aio_write -P 96 12288k 64k",
            "aio_write -P 97 12416k 128k",
            "aio_write -P 98 12544k 64k",
            "aio_write -P 99 12672k 64k",
            "aio_flush",
        ]),
    ],
    ..PLAIN
};

const OTHER_FORMAT: Body = Body {
    name: "alloc",
    steps: &[
        Step::Io(&[
            "write -P 1 0 64k",
            "write -P 2 1M 8k",
            "flush",
            "write -P 3 2M 1M",
        ]),
        Step::Io(&[
            "write -P 4 4k 4k",
            "write -z 3M 64k",
            "write -P 5 1536k 512",
        ]),
    ],
    ..PLAIN
};

/// Every workload of the run: `(body, variant)`.
pub fn all() -> Vec<(Body, Variant)> {
    let mut list = Vec::new();
    for body in [COW, COMPRESSED, DISCARD, SNAPSHOT, COMMIT, REBASE, SCATTER] {
        for variant in [V2, V3, LAZY, EXTL2] {
            list.push((body, variant));
        }
    }
    // Version 2 images have no bitmaps.
    for variant in [V3, LAZY, EXTL2] {
        list.push((BITMAPS, variant));
    }
    // Extended L2 needs clusters of 16 KiB or more and cannot be amended back to v2.
    for variant in [V3, LAZY] {
        list.push((GROWTH, variant));
        list.push((AMEND, variant));
    }
    list.push((COW, ("qed", "qed", "")));
    let others = [
        ("qed", "qed", ""),
        ("vdi", "vdi", ""),
        ("vpc", "vpc", ""),
        ("vhdx", "vhdx", ""),
    ];
    for variant in others {
        list.push((OTHER_FORMAT, variant));
    }
    list
}

/// The workloads whose name (`body/variant`) contains `filter`, or is `filter` without its
/// trailing `$`.
pub fn matching(filter: &str) -> Vec<(Body, Variant)> {
    all()
        .into_iter()
        .filter(|(b, v)| {
            let name = format!("{}/{}", b.name, v.0);
            match filter.strip_suffix('$') {
                Some(exact) => name == exact,
                None => name.contains(filter),
            }
        })
        .collect()
}
