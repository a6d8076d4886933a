//! containerd's configuration: where the CRI runtime handlers live in each
//! config version, and the `wasmlet` handler added to or removed from a
//! config in place (toml_edit keeps every comment and setting around it).

use anyhow::{bail, Context, Result};
use toml_edit::{value, DocumentMut, Item, Table};

/// The handler name a RuntimeClass names.
pub const HANDLER: &str = "wasmlet";
/// The runtime type containerd knows the shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmlet.v1";

/// Where CRI runtime handlers live, by config `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// version 1 (or none): plugins named by short id.
    V1,
    /// version 2: containerd 1.x.
    V2,
    /// version 3: containerd 2.x, where CRI's runtime part is a plugin of its own.
    V3,
}

impl Layout {
    /// The layout a config's `version` key selects; absent means 1.
    pub fn of(doc: &DocumentMut) -> Result<Self> {
        match doc.get("version") {
            None => Ok(Layout::V1),
            Some(item) => match item.as_integer() {
                Some(1) => Ok(Layout::V1),
                Some(2) => Ok(Layout::V2),
                Some(3) => Ok(Layout::V3),
                _ => bail!("config version {} is not one wasmlet knows (1, 2 or 3)", item.to_string().trim()),
            },
        }
    }

    /// The newest layout a containerd of this major version reads.
    pub fn for_containerd_major(major: u64) -> Self {
        if major >= 2 { Layout::V3 } else { Layout::V2 }
    }

    pub fn version(self) -> i64 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
            Layout::V3 => 3,
        }
    }

    /// The keys of the table that holds the runtime handlers.
    fn runtimes(self) -> [&'static str; 4] {
        let plugin = match self {
            Layout::V1 => "cri",
            Layout::V2 => "io.containerd.grpc.v1.cri",
            Layout::V3 => "io.containerd.cri.v1.runtime",
        };
        ["plugins", plugin, "containerd", "runtimes"]
    }
}

/// What the `wasmlet` handler says: its runtime type, the shim by its
/// absolute path (containerd 1.6 and later take `runtime_path`, so the
/// shim need not be on containerd's PATH, which is read-only on nodes such
/// as Flatcar or Bottlerocket) and, when the install has runtime options,
/// the file that holds them (containerd 1.6 passes a shim only a file
/// name, so a file works on every version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub shim: String,
    pub options_file: Option<String>,
}

impl Entry {
    fn table(&self) -> Table {
        let mut table = Table::new();
        table.insert("runtime_type", value(RUNTIME_TYPE));
        table.insert("runtime_path", value(self.shim.as_str()));
        if let Some(path) = &self.options_file {
            let mut options = Table::new();
            options.insert("ConfigPath", value(path.as_str()));
            table.insert("options", Item::Table(options));
        }
        table
    }

    /// The entry alone, as TOML text: for appending to a template or for a
    /// drop-in file (`with_version`).
    pub fn text(&self, layout: Layout, with_version: bool) -> String {
        let mut doc = DocumentMut::new();
        if with_version {
            doc.insert("version", value(layout.version()));
        }
        self.insert_into(&mut doc, layout);
        doc.to_string()
    }

    /// `text` with the entry in place of any `wasmlet` handler it had.
    /// Returns the text unchanged when it already says what the entry says,
    /// so a second install writes nothing.
    pub fn add_to(&self, text: &str, source: &str) -> Result<String> {
        let (mut doc, layout) = parse(text, source)?;
        self.insert_into(&mut doc, layout);
        let edited = doc.to_string();
        Ok(if same_settings(text, &edited)? { text.to_string() } else { edited })
    }

    fn insert_into(&self, doc: &mut DocumentMut, layout: Layout) {
        let mut table = doc.as_table_mut();
        for key in layout.runtimes() {
            let item = table.entry(key).or_insert_with(|| {
                let mut parent = Table::new();
                // No header of its own: `[a.b.c.wasmlet]` is enough.
                parent.set_implicit(true);
                Item::Table(parent)
            });
            table = item.as_table_mut().expect("checked by parse: runtimes path is tables");
        }
        table.insert(HANDLER, Item::Table(self.table()));
    }
}

/// `text` without a `wasmlet` handler; None if it had none.
pub fn remove_from(text: &str, source: &str) -> Result<Option<String>> {
    let (mut doc, layout) = parse(text, source)?;
    let mut table = doc.as_table_mut();
    for key in layout.runtimes() {
        match table.get_mut(key).and_then(Item::as_table_mut) {
            Some(next) => table = next,
            None => return Ok(None),
        }
    }
    Ok(table.remove(HANDLER).map(|_| doc.to_string()))
}

/// Whether the text holds no settings at all (missing, empty, comments).
pub fn is_blank(text: &str, source: &str) -> Result<bool> {
    Ok(parse(text, source)?.0.as_table().is_empty())
}

/// What the text's runc handler says of the systemd cgroup driver
/// (`SystemdCgroup`), if it says anything.
pub fn runc_systemd_cgroup(text: &str) -> Option<bool> {
    let (doc, layout) = parse(text, "").ok()?;
    let mut item = doc.as_item();
    for key in layout.runtimes().into_iter().chain(["runc", "options", "SystemdCgroup"]) {
        item = item.get(key)?;
    }
    item.as_bool()
}

/// The directory of drop-ins the config imports (its first `imports`
/// entry of the form `DIR/*.toml`), where a file of wasmlet's own can go.
pub fn drop_in_dir(text: &str) -> Option<String> {
    let doc: DocumentMut = text.parse().ok()?;
    let imports = doc.get("imports")?.as_array()?;
    let dir = imports.iter().filter_map(|entry| entry.as_str()).find_map(|entry| entry.strip_suffix("/*.toml").map(str::to_string));
    dir
}

/// The document and its layout, checked to reach the runtime handlers
/// through tables.
fn parse(text: &str, source: &str) -> Result<(DocumentMut, Layout)> {
    let doc: DocumentMut = text.parse().with_context(|| format!("{source} is not valid TOML"))?;
    let layout = Layout::of(&doc).with_context(|| format!("{source}: unknown layout"))?;
    let mut item = doc.as_item();
    for key in layout.runtimes() {
        match item.get(key) {
            Some(next) if next.is_table() => item = next,
            Some(next) if next.is_inline_table() => {
                bail!("{source}: `{key}` is an inline table; wasmlet adds its runtime only under [table] headers")
            }
            Some(_) => bail!("{source}: `{key}` on the way to the runtime handlers is not a table"),
            None => break,
        }
    }
    Ok((doc, layout))
}

/// Whether two configs say the same, whatever their formatting.
fn same_settings(a: &str, b: &str) -> Result<bool> {
    let a: toml::Table = toml::from_str(a).context("re-read the config")?;
    let b: toml::Table = toml::from_str(b).context("re-read the edited config")?;
    Ok(a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runc_driver_and_the_drop_in_directory_are_read() {
        let text = "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n";
        assert_eq!(runc_systemd_cgroup(text), Some(true));
        assert_eq!(drop_in_dir(text).as_deref(), Some("/etc/containerd/conf.d"));
        assert_eq!(runc_systemd_cgroup("version = 2\n"), None);
        assert_eq!(drop_in_dir("version = 2\nimports = [\"/etc/containerd/extra.toml\"]\n"), None);
    }

    const V2_WITH_COMMENTS: &str = r#"# Managed by hand: keep these comments.
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  # the pause image
  sandbox_image = "registry.k8s.io/pause:3.9"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true   # kubelet uses systemd
"#;

    const SHIM: &str = "/opt/wasmlet/bin/containerd-shim-wasmlet-v1";

    fn plain() -> Entry {
        Entry { shim: SHIM.into(), options_file: None }
    }

    #[test]
    fn adds_the_handler_where_each_version_has_it() {
        let v3 = plain().add_to("version = 3\n", "c").unwrap();
        assert!(v3.contains(r#"[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wasmlet]"#), "{v3}");
        let v1 = plain().add_to("oom_score = 0\n", "c").unwrap();
        assert!(v1.contains("[plugins.cri.containerd.runtimes.wasmlet]"), "{v1}");
        let v2 = plain().add_to(V2_WITH_COMMENTS, "c").unwrap();
        assert!(v2.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmlet]\nruntime_type = \"io.containerd.wasmlet.v1\"\nruntime_path = \"/opt/wasmlet/bin/containerd-shim-wasmlet-v1\"\n"), "{v2}");
    }

    #[test]
    fn keeps_the_users_text_and_removal_gives_it_back() {
        let added = plain().add_to(V2_WITH_COMMENTS, "c").unwrap();
        assert!(added.starts_with(V2_WITH_COMMENTS.trim_end()), "{added}");
        assert_eq!(remove_from(&added, "c").unwrap().as_deref(), Some(V2_WITH_COMMENTS));
        assert_eq!(remove_from(V2_WITH_COMMENTS, "c").unwrap(), None);
    }

    #[test]
    fn a_second_add_changes_nothing_and_new_options_replace_old_ones() {
        let once = plain().add_to(V2_WITH_COMMENTS, "c").unwrap();
        assert_eq!(plain().add_to(&once, "c").unwrap(), once);
        let with_options = Entry { shim: SHIM.into(), options_file: Some("/opt/wasmlet/options.toml".into()) };
        let twice = with_options.add_to(&once, "c").unwrap();
        assert!(twice.contains("ConfigPath = \"/opt/wasmlet/options.toml\""), "{twice}");
        assert_eq!(twice.matches("runtimes.wasmlet]").count(), 1, "{twice}");
    }

    #[test]
    fn unknown_layouts_and_broken_files_are_named() {
        let err = format!("{:#}", plain().add_to("version = 4\n", "/etc/containerd/config.toml").unwrap_err());
        assert!(err.contains("/etc/containerd/config.toml: unknown layout: config version 4"), "{err}");
        let err = format!("{:#}", plain().add_to("version = [", "/etc/c.toml").unwrap_err());
        assert!(err.contains("/etc/c.toml is not valid TOML"), "{err}");
        let err = format!("{:#}", plain().add_to("version = 2\nplugins = 1\n", "/etc/c.toml").unwrap_err());
        assert!(err.contains("`plugins` on the way to the runtime handlers is not a table"), "{err}");
        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\ncontainerd = { snapshotter = \"overlayfs\" }\n";
        let err = format!("{:#}", plain().add_to(inline, "/etc/c.toml").unwrap_err());
        assert!(err.contains("`containerd` is an inline table"), "{err}");
    }

    #[test]
    fn entry_text_for_drop_ins_and_templates() {
        assert_eq!(
            plain().text(Layout::V2, true),
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmlet]\nruntime_type = \"io.containerd.wasmlet.v1\"\nruntime_path = \"/opt/wasmlet/bin/containerd-shim-wasmlet-v1\"\n"
        );
        let with_options = Entry { shim: SHIM.into(), options_file: Some("/o.toml".into()) }.text(Layout::V3, false);
        assert!(with_options.ends_with(".wasmlet.options]\nConfigPath = \"/o.toml\"\n"), "{with_options}");
    }

    #[test]
    fn sees_the_systemd_cgroup_driver() {
        assert_eq!(runc_systemd_cgroup(V2_WITH_COMMENTS), Some(true));
        assert!(is_blank("# only a comment\n", "c").unwrap());
        assert!(!is_blank("version = 2\n", "c").unwrap());
    }
}
