//! A command's arguments, checked the way QAPI's generated input visitors check them
//! (qapi/qobject-input-visitor.c): a missing member, a member of the wrong type and an
//! unknown member each fail with QEMU's message.

use serde_json::{Map, Value};

use super::QmpError;

/// The `arguments` object of a request, consumed member by member.
pub struct Args {
    map: Map<String, Value>,
}

fn invalid_type(key: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{key}', expected: {expected}"
    ))
}

impl Args {
    /// Wraps a request's arguments.
    pub fn new(map: Map<String, Value>) -> Args {
        Args { map }
    }

    fn required<T>(key: &str, v: Option<T>) -> Result<T, QmpError> {
        v.ok_or_else(|| QmpError::generic(format!("Parameter '{key}' is missing")))
    }

    /// An optional string member.
    pub fn opt_str(&mut self, key: &str) -> Result<Option<String>, QmpError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid_type(key, "string")),
        }
    }

    /// A required string member.
    pub fn str(&mut self, key: &str) -> Result<String, QmpError> {
        let v = self.opt_str(key)?;
        Self::required(key, v)
    }

    /// An optional integer member.
    pub fn opt_int(&mut self, key: &str) -> Result<Option<i64>, QmpError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid_type(key, "integer")),
            Some(_) => Err(invalid_type(key, "integer")),
        }
    }

    /// A required integer member.
    pub fn int(&mut self, key: &str) -> Result<i64, QmpError> {
        let v = self.opt_int(key)?;
        Self::required(key, v)
    }

    /// An optional boolean member.
    pub fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, QmpError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(invalid_type(key, "boolean")),
        }
    }

    /// An optional member of any type.
    pub fn opt_value(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Every member not taken yet (a flat union passed on whole, as blockdev-add's).
    pub fn into_rest(self) -> Map<String, Value> {
        self.map
    }

    /// Fails on the first member no one took (the visitor's check_struct).
    pub fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().next() {
            Some(key) => Err(QmpError::generic(format!(
                "Parameter '{key}' is unexpected"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        match v {
            Value::Object(m) => Args::new(m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn missing_wrong_and_unexpected_members_fail_like_qapi() {
        let mut a = args(json!({"size": "x", "extra": 1}));
        assert_eq!(
            a.str("node-name").unwrap_err().desc,
            "Parameter 'node-name' is missing"
        );
        assert_eq!(
            a.int("size").unwrap_err().desc,
            "Invalid parameter type for 'size', expected: integer"
        );
        assert_eq!(
            a.finish().unwrap_err().desc,
            "Parameter 'extra' is unexpected"
        );
    }
}
