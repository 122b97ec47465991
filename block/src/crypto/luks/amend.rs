//! Adding and erasing key slots of an existing volume (QEMU's
//! qcrypto_block_luks_amend_options and its add/erase helpers in crypto/block-luks.c;
//! `qemu-img amend -o state=active|inactive,keyslot=,old-secret=,new-secret=`).
//!
//! The guards that keep a user from locking the data away for good (overwriting an active
//! slot, erasing the last one) give way only to `--force`, with QEMU's messages.
//!
//! The passphrases are named by secret id; the caller passes the lookup that resolves them
//! (qcrypto_secret_lookup_as_utf8), so the crypto layer stays below the `--object`
//! container whose secrets decrypt with its ciphers.

use super::header::{LuksHeader, LuksParams, KEY_SLOT_DISABLED, NUM_KEY_SLOTS, SALT_LEN};
use super::key_material_range;
use super::volume::{find_key, try_slot, HeaderArea};
use crate::crypto::options::take_iter_time;
use crate::crypto::random_bytes;
use crate::error::{Error, Result};
use crate::{AioContext, Options};

/// Resolves a secret id to its text (qcrypto_secret_lookup_as_utf8).
pub type SecretLookup = fn(&str) -> Result<String>;

/// What an amend asks of the key slots (QCryptoBlockAmendOptionsLUKS).
pub struct AmendOptions {
    /// Add (`active`) or erase (`inactive`).
    pub active: bool,
    /// The slot to act on, if one is named.
    pub keyslot: Option<i64>,
    /// Secret id of a passphrase the volume already knows.
    pub old_secret: Option<String>,
    /// Secret id of the passphrase to add.
    pub new_secret: Option<String>,
    /// PBKDF2 time for a new slot, in milliseconds.
    pub iter_time_ms: u64,
}

impl AmendOptions {
    /// Takes the options (prefix already stripped); None when none was given.
    pub fn take(opts: &mut Options) -> Result<Option<AmendOptions>> {
        if opts.is_empty() {
            return Ok(None);
        }
        let active = match opts.take("state").as_deref() {
            Some("active") => true,
            Some("inactive") => false,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "Parameter 'state' does not accept value '{other}'"
                )))
            }
            None => return Err(Error::invalid("Parameter 'state' is missing")),
        };
        let keyslot = match opts.take("keyslot") {
            Some(v) => Some(v.parse::<i64>().map_err(|_| {
                Error::invalid(format!("Parameter 'keyslot' expects an integer: {v}"))
            })?),
            None => None,
        };
        Ok(Some(AmendOptions {
            active,
            keyslot,
            old_secret: opts.take("old-secret"),
            new_secret: opts.take("new-secret"),
            iter_time_ms: take_iter_time(opts)?,
        }))
    }
}

fn checked_slot(keyslot: i64) -> Result<usize> {
    if (0..NUM_KEY_SLOTS as i64).contains(&keyslot) {
        Ok(keyslot as usize)
    } else {
        Err(Error::invalid(format!(
            "Invalid keyslot {keyslot} specified, must be between 0 and {}",
            NUM_KEY_SLOTS - 1
        )))
    }
}

fn active_count(h: &LuksHeader) -> usize {
    h.key_slots.iter().filter(|s| s.is_active()).count()
}

/// Applies `opts` to the volume in `area`; `header` is updated as written. `master_key`
/// is the key the volume was unlocked with, used unless an old secret is named; `lookup`
/// resolves the secret ids `opts` names.
pub async fn amend(
    area: &HeaderArea<'_>,
    header: &mut LuksHeader,
    params: &LuksParams,
    master_key: Option<&[u8]>,
    (opts, lookup): (AmendOptions, SecretLookup),
    force: bool,
) -> Result<()> {
    let old = opts.old_secret.as_deref().map(lookup).transpose()?;
    if opts.active {
        let keys = (master_key, old, lookup);
        add_keyslot(area, header, params, keys, opts, force).await
    } else {
        erase_keyslots(area, header, params, old, opts, force).await
    }
}

async fn add_keyslot(
    area: &HeaderArea<'_>,
    header: &mut LuksHeader,
    params: &LuksParams,
    (master_key, old, lookup): (Option<&[u8]>, Option<String>, SecretLookup),
    opts: AmendOptions,
    force: bool,
) -> Result<()> {
    let Some(new_secret) = &opts.new_secret else {
        return Err(Error::invalid(
            "'new-secret' is required to activate a keyslot",
        ));
    };
    let new = lookup(new_secret)?;
    let slot = match opts.keyslot {
        Some(k) => checked_slot(k)?,
        None => header
            .key_slots
            .iter()
            .position(|s| !s.is_active())
            .ok_or_else(|| Error::invalid("Can't add a keyslot - all keyslots are in use"))?,
    };
    if !force && header.key_slots[slot].is_active() {
        return Err(Error::invalid(format!(
            "Refusing to overwrite active keyslot {slot} - please erase it first"
        )));
    }
    let master_key = match old {
        Some(old) => find_key(area, header, params, old).await?,
        None => master_key
            .ok_or_else(|| Error::invalid("The volume was opened without its key"))?
            .to_vec(),
    };
    let (mut h, p) = (header.clone(), *params);
    let (h, material) = AioContext::current()
        .thread_pool()
        .submit(move || {
            let m = super::store_key(
                &mut h,
                &p,
                slot,
                new.as_bytes(),
                &master_key,
                opts.iter_time_ms,
            )?;
            Ok::<_, Error>((h, m))
        })
        .await?;
    let (offset, _) = key_material_range(&h, slot);
    area.write(offset, &material).await?;
    area.write(0, &h.to_bytes()).await?;
    *header = h;
    Ok(())
}

async fn erase_keyslots(
    area: &HeaderArea<'_>,
    header: &mut LuksHeader,
    params: &LuksParams,
    old: Option<String>,
    opts: AmendOptions,
    force: bool,
) -> Result<()> {
    let slots = match (opts.keyslot, old) {
        (Some(k), old) => {
            let slot = checked_slot(k)?;
            if let Some(old) = old {
                if !try_slot(area, header, params, slot, old).await? {
                    return Err(Error::invalid(format!(
                        "Given keyslot {slot} doesn't contain the given old password for erase operation"
                    )));
                }
            }
            if !force && !header.key_slots[slot].is_active() {
                return Err(Error::invalid(format!(
                    "Given keyslot {slot} is already erased (inactive) "
                )));
            }
            if !force && active_count(header) == 1 {
                return Err(Error::invalid(format!(
                    "Attempt to erase the only active keyslot {slot} which will erase all the data in the image irreversibly - refusing operation"
                )));
            }
            vec![slot]
        }
        (None, Some(old)) => {
            let mut matching = Vec::new();
            for slot in 0..NUM_KEY_SLOTS {
                if try_slot(area, header, params, slot, old.clone()).await? {
                    matching.push(slot);
                }
            }
            if matching.is_empty() {
                return Err(Error::invalid(
                    "No keyslots match given (old) password for erase operation",
                ));
            }
            if !force && matching.len() == active_count(header) {
                return Err(Error::invalid("All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation"));
            }
            matching
        }
        (None, None) => {
            return Err(Error::invalid(
                "'keyslot' or 'old-secret' is required to erase keyslots",
            ))
        }
    };
    for slot in slots {
        erase_key(area, header, slot).await?;
    }
    Ok(())
}

/// Overwrites a slot's key material with noise and marks it free
/// (qcrypto_block_luks_erase_key).
async fn erase_key(area: &HeaderArea<'_>, header: &mut LuksHeader, slot: usize) -> Result<()> {
    let (offset, len) = key_material_range(header, slot);
    let mut noise = vec![0u8; len];
    random_bytes(&mut noise)?;
    area.write(offset, &noise).await?;
    let s = &mut header.key_slots[slot];
    s.salt = [0; SALT_LEN];
    s.iterations = 0;
    s.active = KEY_SLOT_DISABLED;
    area.write(0, &header.to_bytes()).await
}
