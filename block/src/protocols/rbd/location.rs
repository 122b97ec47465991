//! Where an rbd image is and how to reach its cluster: the `rbd:` filename and the
//! structured options (QEMU's qemu_rbd_parse_filename and BlockdevOptionsRbd in block/rbd.c).
//!
//! The legacy filename is `rbd:pool[/namespace]/image[@snapshot][:key=value...]`. A
//! backslash escapes the next character, so `:` and `@` can appear in names and values;
//! `conf` names the configuration file and `id` the user, every other pair is a Ceph option
//! set on the cluster handle as it stands (`mon_host`, `key`, `keyring`, `auth_supported`...).

use crate::error::{Error, Result};
use crate::options::Options;

/// Everything needed to connect to a cluster and find one image (BlockdevOptionsRbd).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RbdLocation {
    /// Pool holding the image.
    pub pool: String,
    /// RADOS namespace inside the pool (None or "" for the default one).
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Snapshot to open read-only instead of the image's head.
    pub snapshot: Option<String>,
    /// Ceph configuration file; None reads the default locations, ignoring failures.
    pub conf: Option<String>,
    /// Ceph user (client id) without the `client.` prefix.
    pub user: Option<String>,
    /// Monitors to use instead of the configuration's (`server` list), as `host:port`.
    pub servers: Vec<String>,
    /// Accepted authentication modes (`auth-client-required`), e.g. ["cephx"].
    pub auth_client_required: Vec<String>,
    /// Id of a secret object holding the key (`key-secret`).
    pub key_secret: Option<String>,
    /// Ceph options given as `key=value` pairs in the filename, in their order.
    pub keyvalue_pairs: Vec<(String, String)>,
}

/// Splits `src` at the first `delim` not escaped by a backslash (qemu_rbd_next_tok): the
/// token, still escaped, and the rest after the delimiter if there was one.
fn next_tok(src: &str, delim: char) -> (&str, Option<&str>) {
    let mut chars = src.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == delim {
            return (&src[..i], Some(&src[i + c.len_utf8()..]));
        }
        if c == '\\' {
            chars.next();
        }
    }
    (src, None)
}

/// Drops the escaping backslashes (qemu_rbd_unescape); a trailing one stays.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(_)) => out.push(chars.next().unwrap()),
            _ => out.push(c),
        }
    }
    out
}

/// Parses `rbd:pool[/namespace]/image[@snapshot][:key=value...]`.
pub fn parse_filename(filename: &str) -> Result<RbdLocation> {
    let rest = filename
        .strip_prefix("rbd:")
        .ok_or_else(|| Error::invalid("File name must start with 'rbd:'"))?;
    let mut loc = RbdLocation::default();
    let (pool, rest) = next_tok(rest, '/');
    let rest = rest.ok_or_else(|| Error::invalid("Pool name is required"))?;
    loc.pool = unescape(pool);
    // Like QEMU, any '@' further on (even in an option value) means a snapshot is named.
    let (image, mut rest) = if rest.contains('@') {
        let (image, after) = next_tok(rest, '@');
        let (snap, after) = next_tok(after.unwrap_or(""), ':');
        loc.snapshot = Some(unescape(snap));
        (image, after)
    } else {
        next_tok(rest, ':')
    };
    let (namespace, image) = match next_tok(image, '/') {
        (ns, Some(image)) => (unescape(ns), image),
        (image, None) => (String::new(), image),
    };
    loc.namespace = Some(namespace);
    loc.image = unescape(image);
    while let Some(pairs) = rest {
        let (name, after) = next_tok(pairs, '=');
        let name = unescape(name);
        let Some(after) = after else {
            return Err(Error::invalid(format!("conf option {name} has no value")));
        };
        let (value, after) = next_tok(after, ':');
        let value = unescape(value);
        rest = after;
        match name.as_str() {
            "conf" => loc.conf = Some(value),
            "id" => loc.user = Some(value),
            _ => loc.keyvalue_pairs.push((name, value)),
        }
    }
    Ok(loc)
}

/// Reads a list option flattened as `name.0`, `name.1`... (or `name.0.field`).
fn take_list(options: &mut Options, name: &str, field: Option<&str>) -> Vec<String> {
    let mut items = Vec::new();
    loop {
        let key = match field {
            Some(f) => format!("{name}.{}.{f}", items.len()),
            None => format!("{name}.{}", items.len()),
        };
        match options.take(&key) {
            Some(v) => items.push(v),
            None => return items,
        }
    }
}

/// A monitor address as Ceph's `mon_host` wants it; IPv6 hosts go in brackets.
fn mon_address(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl RbdLocation {
    /// Builds the location from the filename (if any) and the structured options, which
    /// win over the filename where both are given.
    pub fn from_options(options: &mut Options) -> Result<RbdLocation> {
        let mut loc = match options.take("filename") {
            Some(f) => parse_filename(&f)?,
            None => RbdLocation::default(),
        };
        let mut set = |key: &str, field: &mut String| {
            if let Some(v) = options.take(key) {
                *field = v;
            }
        };
        set("pool", &mut loc.pool);
        set("image", &mut loc.image);
        for (key, field) in [
            ("namespace", &mut loc.namespace),
            ("snapshot", &mut loc.snapshot),
            ("conf", &mut loc.conf),
            ("user", &mut loc.user),
            ("key-secret", &mut loc.key_secret),
        ] {
            if let Some(v) = options.take(key) {
                *field = Some(v);
            }
        }
        let hosts = take_list(options, "server", Some("host"));
        for (i, host) in hosts.iter().enumerate() {
            let port = options
                .take(&format!("server.{i}.port"))
                .ok_or_else(|| Error::invalid(format!("Parameter 'server.{i}.port' is missing")))?;
            loc.servers.push(mon_address(host, &port));
        }
        loc.auth_client_required = take_list(options, "auth-client-required", None);
        if loc.pool.is_empty() {
            return Err(Error::invalid("Parameter 'pool' is missing"));
        }
        if loc.image.is_empty() {
            return Err(Error::invalid("Parameter 'image' is missing"));
        }
        Ok(loc)
    }

    /// The node's name as QEMU shows it (bdrv_refresh_filename): a `json:` object of the
    /// options that select the image, in the order QEMU prints them.
    pub fn json_filename(&self) -> String {
        let mut o = serde_json::Map::new();
        o.insert("pool".into(), self.pool.clone().into());
        o.insert("image".into(), self.image.clone().into());
        if let Some(conf) = &self.conf {
            o.insert("conf".into(), conf.clone().into());
        }
        if let Some(snap) = &self.snapshot {
            o.insert("snapshot".into(), snap.clone().into());
        }
        for (i, server) in self.servers.iter().enumerate() {
            let (host, port) = server.rsplit_once(':').unwrap_or((server, ""));
            let host = host.trim_start_matches('[').trim_end_matches(']');
            o.insert(format!("server.{i}.host"), host.into());
            o.insert(format!("server.{i}.port"), port.into());
        }
        o.insert("driver".into(), "rbd".into());
        if let Some(ns) = &self.namespace {
            o.insert("namespace".into(), ns.clone().into());
        }
        if let Some(user) = &self.user {
            o.insert("user".into(), user.clone().into());
        }
        let text = serde_json::Value::Object(o).to_string();
        // QEMU's JSON writer puts a space after each ':' and ','.
        format!("json:{}", crate::options::spaced_json(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_image_and_pairs() {
        let loc = parse_filename("rbd:rbd/disk:conf=/etc/c.conf:id=admin:mon_host=1.2.3.4\\:6789")
            .unwrap();
        assert_eq!(loc.pool, "rbd");
        assert_eq!(loc.namespace.as_deref(), Some(""));
        assert_eq!(loc.image, "disk");
        assert_eq!(loc.snapshot, None);
        assert_eq!(loc.conf.as_deref(), Some("/etc/c.conf"));
        assert_eq!(loc.user.as_deref(), Some("admin"));
        assert_eq!(
            loc.keyvalue_pairs,
            vec![("mon_host".to_string(), "1.2.3.4:6789".to_string())]
        );
    }

    #[test]
    fn namespace_snapshot_and_escapes() {
        let loc = parse_filename("rbd:p\\/x/ns/im\\@g@snap\\:1:key=a\\\\b").unwrap();
        assert_eq!(loc.pool, "p/x");
        assert_eq!(loc.namespace.as_deref(), Some("ns"));
        assert_eq!(loc.image, "im@g");
        assert_eq!(loc.snapshot.as_deref(), Some("snap:1"));
        assert_eq!(
            loc.keyvalue_pairs,
            vec![("key".to_string(), "a\\b".to_string())]
        );
        assert_eq!(
            loc.json_filename(),
            r#"json:{"pool": "p/x", "image": "im@g", "snapshot": "snap:1", "driver": "rbd", "namespace": "ns"}"#
        );
    }

    #[test]
    fn malformed_names() {
        let err = |f: &str| parse_filename(f).unwrap_err().to_string();
        assert_eq!(err("rbd:noslash"), "Pool name is required");
        assert_eq!(err("nbd:x/y"), "File name must start with 'rbd:'");
        assert_eq!(err("rbd:p/i:conf"), "conf option conf has no value");
    }

    #[test]
    fn structured_options() {
        let mut o = Options::new();
        for (k, v) in [
            ("pool", "rbd"),
            ("image", "i"),
            ("server.0.host", "::1"),
            ("server.0.port", "3300"),
            ("server.1.host", "10.0.0.1"),
            ("server.1.port", "6789"),
            ("auth-client-required.0", "cephx"),
            ("auth-client-required.1", "none"),
        ] {
            o.set(k, v);
        }
        let loc = RbdLocation::from_options(&mut o).unwrap();
        assert!(o.is_empty());
        assert_eq!(loc.servers, vec!["[::1]:3300", "10.0.0.1:6789"]);
        assert_eq!(loc.auth_client_required, vec!["cephx", "none"]);
        let mut o = Options::new();
        o.set("pool", "rbd");
        assert_eq!(
            RbdLocation::from_options(&mut o).unwrap_err().to_string(),
            "Parameter 'image' is missing"
        );
    }
}
