//! `-boot order=,once=,menu=,splash-time=,reboot-timeout=,strict=`: what the firmware boots
//! from, and how it waits (QEMU's softmmu/vl.c boot options and hw/i386/pc.c set_boot_dev).
//!
//! The order is the PC's legacy one, drive letters in CMOS: `a` floppy, `c` first hard disk,
//! `d` CD-ROM, `n` network, at most three; SeaBIOS turns them into the priorities of its
//! boot list. `once=` applies to the first boot only: a guest reset goes back to `order=`.
//! `menu=on` lets the user pick a device (fw_cfg key 0x0E), `splash-time=` is how long the
//! menu prompt waits (fw_cfg `etc/boot-menu-wait`, milliseconds).

use block::Options;

use crate::error::MachineError;

/// The boot devices a `pc` machine takes in CMOS.
pub const MAX_BOOT_DEVICES: usize = 3;

/// The parsed `-boot` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    /// `order=`: drive letters, first first.
    pub order: Option<String>,
    /// `once=`: the order of the first boot.
    pub once: Option<String>,
    /// `menu=on`.
    pub menu: bool,
    /// `splash-time=`: milliseconds the boot menu prompt waits.
    pub splash_time: Option<u16>,
    /// `reboot-timeout=`: see [`super::VmConfig::boot_fail_wait`].
    pub reboot_timeout: Option<i64>,
}

impl BootOptions {
    /// Applies one `-boot` argument over the earlier ones (QEMU merges repeated -boot).
    pub fn parse(&mut self, arg: &str) -> Result<(), MachineError> {
        let opts = Options::parse_keyval(arg, Some("order"))
            .map_err(|e| MachineError::Config(e.to_string()))?;
        for (key, value) in opts.iter() {
            match key {
                "order" => self.order = Some(validate_order(value)?),
                "once" => self.once = Some(validate_order(value)?),
                "menu" => self.menu = parse_on_off(key, value)?,
                "strict" => {
                    parse_on_off(key, value)?;
                }
                "splash-time" => {
                    let ms = value.parse().map_err(|_| {
                        MachineError::Config(format!(
                            "Parameter 'splash-time' expects uint32, got '{value}'"
                        ))
                    })?;
                    self.splash_time = Some(ms);
                }
                "reboot-timeout" => self.reboot_timeout = Some(parse_reboot_timeout(value)?),
                _ => return Err(MachineError::Config(format!("Invalid parameter '{key}'"))),
            }
        }
        Ok(())
    }

    /// The CMOS boot devices: `once=`, else `order=`, else `default`. (The machine drops
    /// `once` after the first boot.)
    pub fn cmos_order(&self, default: [u8; 3]) -> [u8; 3] {
        let Some(order) = self.once.as_ref().or(self.order.as_ref()) else {
            return default;
        };
        let mut codes = [0u8; 3];
        for (code, letter) in codes.iter_mut().zip(order.bytes()) {
            *code = cmos_code(letter).unwrap_or(0);
        }
        codes
    }
}

/// The CMOS code of a boot letter (the nibbles SeaBIOS reads from 0x3D and 0x38).
fn cmos_code(letter: u8) -> Option<u8> {
    match letter {
        b'a' => Some(1),
        b'c' => Some(2),
        b'd' => Some(3),
        b'n' => Some(4),
        _ => None,
    }
}

/// Checks a boot order string the way QEMU does: letters it knows, no repeats, at most three.
fn validate_order(order: &str) -> Result<String, MachineError> {
    for (i, letter) in order.bytes().enumerate() {
        if !(b'a'..=b'p').contains(&letter) {
            return Err(MachineError::Config(format!(
                "Invalid boot device '{}'",
                letter as char
            )));
        }
        if order.as_bytes()[..i].contains(&letter) {
            return Err(MachineError::Config(format!(
                "Boot device '{}' was given twice",
                letter as char
            )));
        }
        if cmos_code(letter).is_none() {
            return Err(MachineError::Config(format!(
                "Invalid boot device for PC: '{}'",
                letter as char
            )));
        }
    }
    if order.len() > MAX_BOOT_DEVICES {
        return Err(MachineError::Config(
            "Too many boot devices for PC".to_string(),
        ));
    }
    Ok(order.to_string())
}

fn parse_on_off(key: &str, value: &str) -> Result<bool, MachineError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(MachineError::Config(format!(
            "Parameter '{key}' expects 'on' or 'off', got '{value}'"
        ))),
    }
}

fn parse_reboot_timeout(value: &str) -> Result<i64, MachineError> {
    let ms: i64 = value.parse().map_err(|_| {
        MachineError::Config("Parameter 'reboot-timeout' expects a number".to_string())
    })?;
    if !(-1..=0xffff).contains(&ms) {
        return Err(MachineError::Config(
            "reboot timeout is invalid, it should be a value between -1 and 65535".to_string(),
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_once_become_cmos_codes() {
        let mut b = BootOptions::default();
        b.parse("order=dc,menu=on,splash-time=2500").unwrap();
        b.parse("once=c").unwrap();
        assert_eq!(b.cmos_order([2, 3, 1]), [2, 0, 0]);
        b.once = None;
        assert_eq!(b.cmos_order([2, 3, 1]), [3, 2, 0]);
        assert!(b.menu);
        assert_eq!(b.splash_time, Some(2500));
        assert_eq!(BootOptions::default().cmos_order([2, 3, 1]), [2, 3, 1]);
    }

    #[test]
    fn bad_orders_are_refused_with_qemus_words() {
        let mut b = BootOptions::default();
        assert_eq!(
            b.parse("order=cc").unwrap_err().to_string(),
            "Boot device 'c' was given twice"
        );
        assert_eq!(
            b.parse("order=x").unwrap_err().to_string(),
            "Invalid boot device 'x'"
        );
        assert_eq!(
            b.parse("order=e").unwrap_err().to_string(),
            "Invalid boot device for PC: 'e'"
        );
        assert_eq!(
            b.parse("order=acdn").unwrap_err().to_string(),
            "Too many boot devices for PC"
        );
        assert!(b.parse("menu=maybe").is_err());
        assert!(b.parse("bogus=1").is_err());
    }
}
