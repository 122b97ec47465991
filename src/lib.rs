//! rqemu: the machine and the command-line tools over the block layer (`block`) and the image
//! formats (`formats`).
//!
//! The machine, in the order a guest meets it: [`vm_config`] (the command line) →
//! [`machine`] (the `pc` board and its run/reset cycle) → [`memory`] and [`kvm`] (guest RAM,
//! the VM and the vCPU loop) → [`bus`] (exit dispatch under the device lock) → [`devices`]
//! → [`boot`] (SeaBIOS or direct Linux). [`main_loop`] and [`drives`] are where the block
//! layer runs beside the vCPU.

pub mod block_error;
pub mod block_export;
pub mod boot;
pub mod bus;
pub mod chardev;
pub mod devices;
pub mod drives;
pub mod error;
pub mod kvm;
pub mod machine;
pub mod main_loop;
pub mod memory;
pub mod monitor;
pub mod qjson;
pub mod qtest;
pub mod runstate;
pub mod tools;
pub mod vm_config;
