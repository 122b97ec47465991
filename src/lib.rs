//! rqemu: the machine and the command-line tools over the block layer (`block`) and the image
//! formats (`formats`).

pub mod devices;
pub mod tools;
