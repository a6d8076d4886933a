//! Config templates (k3s, rke2, microk8s) are not TOML until their
//! distribution renders them, so the handler goes in as a marked block of
//! text at the end, and comes out the same way.

const BEGIN: &str = "# BEGIN wasmlet: added by wasmlet-node-installer, removed by its uninstall\n";
const END: &str = "# END wasmlet\n";

/// `text` (None: no template yet, so start from `preamble`) with `block`
/// as its marked wasmlet block, replacing an earlier one. Returns the text
/// unchanged when its block is already this one.
pub fn add_block(text: Option<&str>, preamble: &str, block: &str) -> String {
    let base = match text {
        Some(text) => remove_block(text).unwrap_or_else(|| text.to_string()),
        None => preamble.to_string(),
    };
    let mut out = base;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push_str(block);
    if !block.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(END);
    out
}

/// `text` without its wasmlet block; None if it has none.
pub fn remove_block(text: &str) -> Option<String> {
    let start = text.find(BEGIN)?;
    let end = text[start..].find(END)? + start + END.len();
    Some(format!("{}{}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "[plugins.x.runtimes.wasmlet]\nruntime_type = \"io.containerd.wasmlet.v1\"\n";

    #[test]
    fn a_new_template_starts_from_the_preamble() {
        let text = add_block(None, "{{ template \"base\" . }}\n\n", BLOCK);
        assert!(text.starts_with("{{ template \"base\" . }}\n\n# BEGIN wasmlet"), "{text}");
        assert!(text.ends_with("runtime_type = \"io.containerd.wasmlet.v1\"\n# END wasmlet\n"), "{text}");
    }

    #[test]
    fn adding_twice_gives_one_block_and_removal_gives_the_text_back() {
        let original = "{{ template \"base\" . }}\n[plugins.other]\n  x = 1";
        let once = add_block(Some(original), "", BLOCK);
        assert_eq!(add_block(Some(&once), "", BLOCK), once);
        assert_eq!(once.matches("# BEGIN wasmlet").count(), 1);
        let changed = add_block(Some(&once), "", "[plugins.x.runtimes.wasmlet]\n");
        assert_eq!(changed.matches("# BEGIN wasmlet").count(), 1);
        assert!(!changed.contains("runtime_type"), "{changed}");
        // Only the newline added before the block stays.
        assert_eq!(remove_block(&once).as_deref(), Some("{{ template \"base\" . }}\n[plugins.other]\n  x = 1\n"));
        assert_eq!(remove_block(original), None);
    }
}
