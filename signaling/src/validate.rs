//! Validation of names that come from untrusted clients (room names, display names).

use crate::SignalingError;

/// Longest room name or display name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A room name is 1–64 characters of `A–Z a–z 0–9 . _ -`: safe in URLs, logs and file paths.
pub fn room_name(room: &str) -> Result<(), SignalingError> {
    if room.is_empty() {
        return Err(SignalingError::BadRoom("it is empty"));
    }
    if room.chars().count() > MAX_NAME_CHARS {
        return Err(SignalingError::BadRoom("it is longer than 64 characters"));
    }
    if !room
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(SignalingError::BadRoom(
            "use only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// A display name is 1–64 characters after trimming, with no control characters.
/// Returns the trimmed name.
pub fn display_name(name: &str) -> Result<String, SignalingError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(SignalingError::BadName("it is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(SignalingError::BadName("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(SignalingError::BadName("it contains control characters"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(room_name("tumour-board_2026.11").is_ok());
        assert!(room_name("").is_err());
        assert!(room_name("bad room!").is_err());
        assert!(room_name("../etc").is_err());
        assert!(room_name(&"a".repeat(65)).is_err());
        assert!(room_name(&"a".repeat(64)).is_ok());
        assert!(room_name("raum-ü").is_err());
    }

    #[test]
    fn display_names() {
        assert_eq!(display_name("  Dr Ada  ").unwrap(), "Dr Ada");
        assert_eq!(
            display_name("Dr Müller-Lüdenscheidt").unwrap(),
            "Dr Müller-Lüdenscheidt"
        );
        assert!(display_name("   ").is_err());
        assert!(display_name("a\u{0}b").is_err());
        assert!(display_name(&"é".repeat(65)).is_err());
    }
}
