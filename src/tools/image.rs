//! Opening an image the way qemu-img and qemu-io do (their `img_open` / `openfile`).
//!
//! A tool names an image three ways: a filename plus an optional `-f FORMAT`; a `json:{...}`
//! pseudo-filename; or, with `--image-opts`, a keyval string (`driver=qcow2,file.filename=x`).
//! All become a filename and an options dictionary for `bdrv_open`.

use std::rc::Rc;

use block::{BlockBackend, Error, OpenFlags, Options, Result};

/// How a tool refers to one image.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// The filename operand (or the keyval string with `image_opts`).
    pub filename: String,
    /// `-f FORMAT`, if given.
    pub format: Option<String>,
    /// Whether `filename` is an `--image-opts` keyval string.
    pub image_opts: bool,
}

impl ImageSpec {
    /// The filename and options to hand to `bdrv_open`.
    pub fn to_open_args(&self) -> Result<(Option<String>, Options)> {
        if self.image_opts {
            if self.format.is_some() {
                return Err(Error::invalid(
                    "--image-opts and --format are mutually exclusive",
                ));
            }
            let opts = Options::parse_keyval(&self.filename, Some("file"))?;
            return Ok((None, opts));
        }
        let mut opts = Options::new();
        if let Some(fmt) = &self.format {
            opts.set("driver", fmt.clone());
        }
        Ok((Some(self.filename.clone()), opts))
    }
}

/// Opens an image for a tool: probing the format if none was given.
pub async fn open_image(
    spec: &ImageSpec,
    extra: Options,
    flags: OpenFlags,
) -> Result<Rc<BlockBackend>> {
    let (filename, mut opts) = spec.to_open_args()?;
    for (k, v) in extra.iter() {
        opts.set_default(k, v);
    }
    BlockBackend::open(filename.as_deref(), opts, flags).await
}

/// Prints raw_open's warning when `blk`'s format was guessed as raw and it is writable;
/// `filename` names the image when it has no file child.
pub fn warn_if_probed_raw(blk: &BlockBackend, filename: &str) {
    if blk.bs().was_probed() && blk.bs().format_name() == "raw" && !blk.is_read_only() {
        let name = blk
            .bs()
            .file()
            .map_or(filename.to_string(), |f| f.filename());
        eprintln!("{}", raw_probe_warning(&name));
    }
}

/// The "WARNING: Image format was not specified..." text qemu-img and qemu-io print when
/// probing picked raw (the user should name the format explicitly).
pub fn raw_probe_warning(filename: &str) -> String {
    format!(
        "WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
         Specify the 'raw' format explicitly to remove the restrictions."
    )
}
