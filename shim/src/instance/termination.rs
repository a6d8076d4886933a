//! The termination message: when the guest fails, why goes into the file
//! kubelet mounts for it (the plan names it), which `kubectl describe` then shows.

use std::path::Path;

/// kubelet reads at most this much of the file.
const MAX_LEN: usize = 4096;

/// Writes the end of `message` (the cause comes last), as much as kubelet reads.
pub fn write(path: &Path, message: &str) {
    let mut start = message.len().saturating_sub(MAX_LEN);
    while !message.is_char_boundary(start) {
        start += 1;
    }
    let _ = std::fs::write(path, &message[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_keep_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        let message = format!("{}cause", "x".repeat(5000));
        write(&file, &message);
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.len(), MAX_LEN);
        assert!(written.ends_with("cause"));
    }
}
