//! The order QEMU's QDict walks its keys in (qobject/qdict.c: tdb_hash into 512 buckets),
//! so that of several options a reopen cannot change, the one QEMU names in its error is
//! the one named here too.

/// QDICT_BUCKET_MAX.
const BUCKETS: u32 = 512;

/// The bucket a key lands in (tdb_hash modulo the bucket count).
fn bucket(key: &str) -> u32 {
    let mut value = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (i, b) in key.bytes().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % BUCKETS
}

/// `keys` in the order qdict_first/qdict_next visit them.
pub fn qdict_order<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_by_key(|k| (bucket(k), *k));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_keys_come_in_qemus_order() {
        // The keys iotest 245 sees reported first.
        let keys = [
            "backing.file.driver",
            "backing.file.filename",
            "backing.driver",
        ];
        assert_eq!(qdict_order(keys.into_iter())[0], "backing.driver");
        let keys = [
            "backing.driver",
            "backing.node-name",
            "backing.backing.file.node-name",
        ];
        assert_eq!(
            qdict_order(keys.into_iter())[0],
            "backing.backing.file.node-name"
        );
    }
}
