//! User-creatable objects: what `--object` (tools) and `-object` (rqemu) define, looked up
//! later by id (QEMU's qom/object_interfaces.c, user_creatable_add_qapi and the
//! `/objects` container).
//!
//! An object definition is a keyval string whose implied first key is the type:
//! `secret,id=sec0,data=letmein`. Each type has a constructor that takes the options it
//! knows and refuses the rest; the objects live for the whole process, like QEMU's.
//! Types other developers add later go into [`TYPES`] with their own module.

pub mod iothread;
pub mod secret;
pub mod tls_creds;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::options::Options;

/// An object created by the user.
pub enum UserObject {
    /// A `secret` (passphrases, keys).
    Secret(secret::Secret),
    /// A `tls-creds-x509` (certificates for NBD over TLS).
    TlsCredsX509(tls_creds::TlsCredsX509),
    /// A `throttle-group`: I/O limits shared by the throttle nodes naming it.
    ThrottleGroup(Box<crate::throttle::ThrottleConfig>),
    /// An `iothread`: an AioContext devices and nodes can be given to.
    IoThread(iothread::IoThread),
}

/// Builds an object of one type from its remaining options.
type Constructor = fn(&mut Options) -> Result<UserObject>;

/// The types `--object` accepts, by QOM type name.
const TYPES: &[(&str, Constructor)] = &[
    ("secret", secret::Secret::create),
    ("tls-creds-x509", tls_creds::TlsCredsX509::create),
    ("throttle-group", throttle_group),
    ("iothread", iothread::IoThread::create),
];

/// A `throttle-group` from its `x-`-prefixed or `limits.`-nested limits.
fn throttle_group(opts: &mut Options) -> Result<UserObject> {
    let legacy = crate::throttle::ThrottleConfig::from_options(opts, "x-")?;
    let nested = crate::throttle::ThrottleConfig::from_options(opts, "limits.")?;
    check_unused(opts)?;
    Ok(UserObject::ThrottleGroup(Box::new(if legacy.enabled() {
        legacy
    } else {
        nested
    })))
}

/// QOM types QEMU has that rqemu will need but does not build yet, and why.
const NOT_YET: &[(&str, &str)] = &[
    // rustls has no TLS-PSK (neither TLS 1.2's PSK suites nor TLS 1.3's external PSKs,
    // rustls issue #174), and a second TLS stack only for this is not worth its weight.
    (
        "tls-creds-psk",
        "TLS with pre-shared keys (TLS-PSK) is not available in rustls, use tls-creds-x509",
    ),
    (
        "tls-creds-anon",
        "anonymous TLS credentials are not built yet",
    ),
];

static OBJECTS: Mutex<BTreeMap<String, Arc<UserObject>>> = Mutex::new(BTreeMap::new());

/// Creates an object from a command-line definition (user_creatable_add_from_str).
pub fn user_creatable_add_from_str(optarg: &str) -> Result<()> {
    let mut opts = Options::parse_keyval(optarg, Some("qom-type"))?;
    let qom_type = opts
        .take("qom-type")
        .ok_or_else(|| Error::invalid("Parameter 'qom-type' is missing"))?;
    user_creatable_add(&qom_type, opts)
}

/// Creates an object of `qom_type` from its `id` and properties (user_creatable_add_type;
/// QMP's object-add).
pub fn user_creatable_add(qom_type: &str, mut opts: Options) -> Result<()> {
    let qom_type = qom_type.to_string();
    let Some(&(_, constructor)) = TYPES.iter().find(|(name, _)| *name == qom_type) else {
        if let Some((_, why)) = NOT_YET.iter().find(|(name, _)| *name == qom_type) {
            return Err(Error::not_supported(format!(
                "Object type '{qom_type}' is not supported by rqemu: {why}"
            )));
        }
        return Err(Error::invalid(format!(
            "Parameter 'qom-type' does not accept value '{qom_type}'"
        )));
    };
    let id = opts
        .take("id")
        .ok_or_else(|| Error::invalid("Parameter 'id' is missing"))?;
    let object = constructor(&mut opts)?;
    object_add(&id, object)
}

/// Adds an object under `id` (object_property_try_add_child on `/objects`).
pub fn object_add(id: &str, object: UserObject) -> Result<()> {
    let mut objects = OBJECTS.lock().unwrap_or_else(|e| e.into_inner());
    if objects.contains_key(id) {
        return Err(Error::invalid(format!(
            "attempt to add duplicate property '{id}' to object (type 'container')"
        )));
    }
    objects.insert(id.to_string(), Arc::new(object));
    Ok(())
}

/// The object named `id`, if there is one (object_resolve_path_component).
pub fn lookup(id: &str) -> Option<Arc<UserObject>> {
    let objects = OBJECTS.lock().unwrap_or_else(|e| e.into_inner());
    objects.get(id).cloned()
}

/// Fails with "Parameter 'KEY' is unexpected" when a constructor left an option unread.
pub fn check_unused(opts: &Options) -> Result<()> {
    match opts.first_key() {
        Some(key) => Err(Error::invalid(format!("Parameter '{key}' is unexpected"))),
        None => Ok(()),
    }
}
