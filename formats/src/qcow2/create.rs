//! Creating an image (QEMU's qcow2_co_create and qcow2_co_create_opts in block/qcow2.c).
//!
//! Like QEMU, creation writes the smallest valid image by hand — header in cluster 0,
//! refcount table in cluster 1, one refcount block in cluster 2 counting those three — and
//! then opens it with the driver itself to grow it to the requested size, so that the L1
//! table is placed by the same allocation code every later write uses.

use block::driver::{CreateOption, PreallocMode};
use block::{BlockDriverState, Error, OpenFlags, Options, Result};

use super::crypto::EncryptCreate;
use super::data_file::DataFileParams;
use super::header::{
    self, CompressionType, Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2,
};
use super::refcount::set_entry;
use super::state::encode_table;
use crate::image_file::create_protocol_file;

/// Creation options in QEMU's order (qcow2_create_opts: the qcow2-only options, then the
/// ones shared with amend), which is the order of the "Formatting" line.
pub const CREATE_OPTIONS: [CreateOption; 21] = [
    opt(
        "encryption",
        "bool",
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
        None,
    ),
    opt(
        "encrypt.format",
        "str",
        "Encrypt the image, format choices: 'aes', 'luks'",
        None,
    ),
    opt(
        "encrypt.key-secret",
        "str",
        "ID of secret providing qcow AES key or LUKS passphrase",
        None,
    ),
    opt(
        "encrypt.cipher-alg",
        "str",
        "Name of encryption cipher algorithm",
        None,
    ),
    opt(
        "encrypt.cipher-mode",
        "str",
        "Name of encryption cipher mode",
        None,
    ),
    opt(
        "encrypt.ivgen-alg",
        "str",
        "Name of IV generator algorithm",
        None,
    ),
    opt(
        "encrypt.ivgen-hash-alg",
        "str",
        "Name of IV generator hash algorithm",
        None,
    ),
    opt(
        "encrypt.hash-alg",
        "str",
        "Name of encryption hash algorithm",
        None,
    ),
    opt(
        "encrypt.iter-time",
        "num",
        "Time to spend in PBKDF in milliseconds",
        None,
    ),
    opt("cluster_size", "size", "qcow2 cluster size", Some("65536")),
    opt("extended_l2", "bool", "Extended L2 tables", Some("off")),
    opt(
        "preallocation",
        "str",
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
        None,
    ),
    opt(
        "compression_type",
        "str",
        "Compression method used for image cluster compression",
        Some("zlib"),
    ),
    opt("size", "size", "Virtual disk size", None),
    opt(
        "compat",
        "str",
        "Compatibility level (v2 [0.10] or v3 [1.1])",
        None,
    ),
    opt("backing_file", "str", "File name of a base image", None),
    opt("backing_fmt", "str", "Image format of the base image", None),
    opt(
        "data_file",
        "str",
        "File name of an external data file",
        None,
    ),
    opt(
        "data_file_raw",
        "bool",
        "The external data file must stay valid as a raw image",
        None,
    ),
    opt(
        "lazy_refcounts",
        "bool",
        "Postpone refcount updates",
        Some("off"),
    ),
    opt(
        "refcount_bits",
        "num",
        "Width of a reference count entry in bits",
        Some("16"),
    ),
];

const fn opt(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    default: Option<&'static str>,
) -> CreateOption {
    CreateOption {
        name,
        kind,
        help,
        default,
    }
}

/// The parsed creation options.
#[derive(Clone, Debug)]
pub struct CreateParams {
    /// Virtual size.
    pub size: u64,
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// log2 of the refcount width.
    pub refcount_order: u32,
    /// Lazy refcounts.
    pub lazy_refcounts: bool,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Compression type.
    pub compression: CompressionType,
    /// Backing file name and format.
    pub backing: Option<(String, Option<String>)>,
    /// Preallocation mode.
    pub prealloc: PreallocMode,
    /// External data file, if any.
    pub data_file: DataFileParams,
    /// Encryption, if any.
    pub encrypt: Option<EncryptCreate>,
}

fn v3_only(what: &str) -> Error {
    Error::invalid(format!(
        "{what} only supported with compatibility level 1.1 and above (use version=v3 or greater)"
    ))
}

/// Reads and validates the creation options, with QEMU's messages.
pub fn parse_params(options: &mut Options) -> Result<CreateParams> {
    // The virtual size is kept in whole sectors (qcow2_co_create_opts rounds it up).
    let size = options
        .take_size("size")?
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::new(libc::EFBIG, "Image size too large"))?;
    let version = match options.take("compat").as_deref() {
        None | Some("1.1") | Some("v3") => 3,
        Some("0.10") | Some("v2") => 2,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'version' does not accept value '{other}'"
            )))
        }
    };
    let cluster_size = options.take_size("cluster_size")?.unwrap_or(65536);
    if !cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size) {
        return Err(Error::invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    let refcount_bits = options.take_u64("refcount_bits")?.unwrap_or(16);
    if !refcount_bits.is_power_of_two() || refcount_bits > 64 {
        return Err(Error::invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    let lazy_refcounts = options.take_bool("lazy_refcounts")?.unwrap_or(false);
    let extended_l2 = options.take_bool("extended_l2")?.unwrap_or(false);
    let compression = match options.take("compression_type").as_deref() {
        None | Some("zlib") => CompressionType::Zlib,
        Some("zstd") => CompressionType::Zstd,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'compression-type' does not accept value '{other}'"
            )))
        }
    };
    let prealloc = match options.take("preallocation") {
        Some(p) => PreallocMode::parse(&p)?,
        None => PreallocMode::Off,
    };
    let backing_file = options.take("backing_file");
    let backing_fmt = options.take("backing_fmt");
    let data_file = DataFileParams::take(options, version, backing_file.is_some())?;
    let encrypt = EncryptCreate::take(options)?;
    if version == 2 {
        if lazy_refcounts {
            return Err(v3_only("Lazy refcounts"));
        }
        if refcount_bits != 16 {
            return Err(Error::invalid("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"));
        }
        if extended_l2 {
            return Err(Error::invalid("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if compression != CompressionType::Zlib {
            return Err(Error::invalid("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
    }
    if extended_l2 && cluster_size < 16384 {
        return Err(Error::invalid(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    if backing_file.is_some() && prealloc != PreallocMode::Off && !extended_l2 {
        return Err(Error::invalid(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    if backing_fmt.is_some() && backing_file.is_none() {
        return Err(Error::invalid(
            "Backing format cannot be used without backing file",
        ));
    }
    Ok(CreateParams {
        size,
        version,
        cluster_bits: cluster_size.trailing_zeros(),
        refcount_order: refcount_bits.trailing_zeros(),
        lazy_refcounts,
        extended_l2,
        compression,
        backing: backing_file.map(|f| (f, backing_fmt)),
        prealloc,
        data_file,
        encrypt,
    })
}

/// The first three clusters of a new image of size 0: header, refcount table, refcount
/// block.
pub fn initial_image(p: &CreateParams) -> Result<Vec<u8>> {
    let mut h = Header::new(p.version, p.cluster_bits, 0);
    let cs = h.cluster_size() as usize;
    h.refcount_order = p.refcount_order;
    h.refcount_table_offset = cs as u64;
    h.refcount_table_clusters = 1;
    if p.lazy_refcounts {
        h.compatible_features |= COMPAT_LAZY_REFCOUNTS;
    }
    if p.extended_l2 {
        h.incompatible_features |= INCOMPAT_EXTL2;
    }
    if p.compression != CompressionType::Zlib {
        h.incompatible_features |= INCOMPAT_COMPRESSION;
        h.compression_type = p.compression;
    }
    if let Some((file, fmt)) = &p.backing {
        if file.len() > header::MAX_BACKING_NAME as usize {
            return Err(Error::invalid("Backing file name too long"));
        }
        h.backing_file = Some(file.clone());
        h.backing_format = fmt.clone();
    }
    p.data_file.apply(&mut h);
    let mut image = h.serialise()?;
    image.resize(3 * cs, 0);
    let reftable = encode_table(&[2 * cs as u64]);
    image[cs..cs + 8].copy_from_slice(&reftable);
    for cluster in 0..3 {
        set_entry(&mut image[2 * cs..], p.refcount_order, cluster, 1);
    }
    Ok(image)
}

/// Creates a qcow2 image at `filename` (qcow2_co_create_opts), and its external data file
/// when one is asked for.
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let params = parse_params(options)?;
    // Both files start empty; only the protocol's own options reach them.
    let mut file_opts = Options::new();
    file_opts.set("size", "0");
    for key in ["nocow", "extent_size_hint"] {
        if let Some(v) = options.take(key) {
            file_opts.set(key, v);
        }
    }
    let file_class = create_protocol_file(filename, &file_opts).await?;
    let mut open_opts = Options::new();
    open_opts.set("driver", file_class.format_name);
    open_opts.set("filename", filename);
    let file = block::bdrv_open(None, open_opts, OpenFlags::default()).await?;
    let image = initial_image(&params)?;
    super::write_bytes(&file, 0, &image).await?;
    file.co_flush().await?;
    file.close().await?;
    drop(file);
    let mut qcow2_opts = Options::new();
    qcow2_opts.set("driver", "qcow2");
    qcow2_opts.set("file.driver", file_class.format_name);
    qcow2_opts.set("file.filename", filename);
    if let Some(data_file) = &params.data_file.name {
        let data_class = create_protocol_file(data_file, &file_opts).await?;
        qcow2_opts.set("data-file.driver", data_class.format_name);
        qcow2_opts.set("data-file.filename", data_file.as_str());
    }
    grow(qcow2_opts, params).await
}

/// Formats the open protocol node `file` as a qcow2 image, as blockdev-create does with the
/// node its `file` names (qcow2_co_create); the node stays open for its owner.
pub async fn create_on_node(file: &BlockDriverState, options: &mut Options) -> Result<()> {
    let params = parse_params(options)?;
    if params.data_file.name.is_some() {
        return Err(Error::not_supported(
            "blockdev-create of qcow2 with a data-file is not supported yet",
        ));
    }
    let name = file.node_name();
    if name.is_empty() {
        return Err(Error::invalid("The image file node needs a node name"));
    }
    super::write_bytes(file, 0, &initial_image(&params)?).await?;
    file.co_flush().await?;
    let mut qcow2_opts = Options::new();
    qcow2_opts.set("driver", "qcow2");
    qcow2_opts.set("file", name);
    grow(qcow2_opts, params).await
}

/// Opens the minimal image `qcow2_opts` describes and grows it to the requested size, then
/// sets up its encryption (the second half of qcow2_co_create).
async fn grow(qcow2_opts: Options, params: CreateParams) -> Result<()> {
    let flags = OpenFlags {
        no_backing: true,
        ..OpenFlags::default()
    };
    let bs = block::bdrv_open(None, qcow2_opts, flags).await?;
    let mut result = bs
        .co_truncate(params.size, false, params.prealloc)
        .await
        .map_err(|e| e.context("Could not resize image: "));
    if let (Ok(()), Some(how)) = (&result, params.encrypt) {
        let q = bs.drv().as_any().downcast_ref::<super::Qcow2>();
        let q = q.expect("a qcow2 node has the qcow2 driver");
        result = q.set_up_encryption(how).await;
    }
    let closed = bs.close().await;
    result.and(closed)
}
