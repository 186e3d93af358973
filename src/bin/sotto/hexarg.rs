//! Hex arguments: parsed without panicking, with an error that names the flag.

/// Decodes `value` (upper or lower case, even length) or says which argument was bad.
pub fn decode(name: &str, value: &str) -> Result<Vec<u8>, String> {
    hex::decode(value).map_err(|e| format!("{name} is not valid hex: {e}"))
}
