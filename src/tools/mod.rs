//! The command-line tools' shared pieces: GNU-style option parsing and opening images the
//! way qemu-img and qemu-io do (`-f`, `--image-opts`, `json:` filenames, `-U`, `-t`...).

pub mod crash_explore;
pub mod getopt;
pub mod image;
pub mod qemu_img;
pub mod qemu_io;
pub mod qemu_nbd;
