//! The termination message: when the guest fails, why goes into the file
//! kubelet mounts for it, which `kubectl describe` then shows.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// kubelet names the file in this container annotation.
const PATH_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";
/// kubelet's default path.
const DEFAULT_PATH: &str = "/dev/termination-log";
/// kubelet reads at most this much of the file.
const MAX_LEN: usize = 4096;

/// The termination-message file, when one is mounted into the container.
pub fn path_of(spec: &Spec) -> Option<PathBuf> {
    let annotated = spec.annotations().as_ref().and_then(|a| a.get(PATH_ANNOTATION).cloned());
    let path = PathBuf::from(annotated.unwrap_or_else(|| DEFAULT_PATH.into()));
    let mounted = spec.mounts().as_deref().unwrap_or_default().iter().any(|m| m.destination() == &path);
    mounted.then_some(path)
}

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
    use oci_spec::runtime::{MountBuilder, SpecBuilder};

    fn spec_with_mount(destination: &str) -> Spec {
        let mount = MountBuilder::default().destination(destination).typ("bind").source("/host/file").build().unwrap();
        SpecBuilder::default().mounts(vec![mount]).build().unwrap()
    }

    #[test]
    fn only_a_mounted_file_is_used() {
        assert_eq!(path_of(&spec_with_mount("/dev/termination-log")), Some(PathBuf::from("/dev/termination-log")));
        assert_eq!(path_of(&spec_with_mount("/data")), None);
    }

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
