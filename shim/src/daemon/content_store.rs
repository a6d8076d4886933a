//! Wasm OCI artifacts, read from containerd's content store. containerd's
//! snapshotters unpack only tar layers, so a container whose image carries
//! its wasm as a layer of its own has an empty rootfs: the daemon reads that
//! image over containerd's gRPC API (container -> image -> manifest, an
//! index resolved to its wasm entry -> config -> the wasm layer).

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest, Sha256};

use crate::shared::node_cache::MAX_WASM_BYTES;

/// The config media type of a wasm artifact (CNCF wasm OCI artifact layout).
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// Layer media types that hold a whole .wasm file.
const WASM_LAYERS: [&str; 3] = [
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// Operating systems of an index entry for wasm (buildx's `wasi/wasm`, and
/// the artifact layout's `wasip1`/`wasip2`).
const WASM_OS: [&str; 3] = ["wasi", "wasip1", "wasip2"];

/// Manifests and configs are small; a bigger one is not what it claims to be.
const MAX_METADATA_BYTES: u64 = 4 << 20;

/// The annotation that names a layer's file, used to choose among layers.
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// A wasm layer of a container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmLayer {
    /// The image reference, for messages.
    pub image: String,
    /// `sha256:<hex>`: the layer's digest, which is also the wasm's.
    pub digest: String,
    /// Its size as the manifest says, which its content must keep to.
    pub size: u64,
}

impl WasmLayer {
    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// A client of containerd's API for one namespace, used from the shim's
/// synchronous request handlers.
pub struct ContentStore {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    namespace: String,
}

impl ContentStore {
    pub fn connect(address: &str, namespace: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start an I/O runtime")?;
        let path = address.trim_start_matches("unix://").to_string();
        let channel = runtime
            .block_on(containerd_client::connect(&path))
            .with_context(|| format!("connect to containerd at {path}"))?;
        Ok(ContentStore { runtime, channel, namespace: namespace.to_string() })
    }

    /// The wasm layer of the container's image, or None for an image whose
    /// layers are ordinary filesystem layers. `name` (the entrypoint, if
    /// any) chooses among several wasm layers by their title annotation.
    pub fn wasm_layer(&self, container_id: &str, name: Option<&str>) -> Result<Option<WasmLayer>> {
        let image = self.container_image(container_id)?;
        if image.is_empty() {
            return Ok(None);
        }
        self.image_wasm_layer(&image, name).with_context(|| format!("image {image}"))
    }

    fn image_wasm_layer(&self, image: &str, name: Option<&str>) -> Result<Option<WasmLayer>> {
        let mut target = self.image_target(image)?;
        if is_index(target.media_type()) {
            let index: ImageIndex = self.read_json(&target)?;
            match wasm_entry(&index) {
                Some(entry) => target = entry,
                None => return Ok(None),
            }
        }
        let manifest: ImageManifest = self.read_json(&target)?;
        let layer = choose_layer(&manifest, name)?;
        Ok(layer.map(|(digest, size)| WasmLayer { image: image.to_string(), digest, size }))
    }

    /// Copies a layer into `file`, checking it against its digest and its
    /// size (before the copy and while it runs, so a lying store cannot
    /// fill the node's disk).
    pub fn copy_layer(&self, layer: &WasmLayer, file: &mut impl Write) -> Result<()> {
        let copied = match layer.size > MAX_WASM_BYTES {
            true => Err(anyhow!("layer {} is {} bytes, more than the {MAX_WASM_BYTES} a wasm may be", layer.digest, layer.size)),
            false => self.read_verified("layer", &layer.digest, layer.size, |chunk| file.write_all(chunk).context("write the layer")),
        };
        copied.with_context(|| format!("image {}", layer.image))
    }

    fn container_image(&self, id: &str) -> Result<String> {
        let mut client = ContainersClient::new(self.channel.clone());
        let request = self.request(GetContainerRequest { id: id.to_string() });
        let response = self.runtime.block_on(client.get(request)).with_context(|| format!("look up container {id} in containerd"))?;
        Ok(response.into_inner().container.map(|c| c.image).unwrap_or_default())
    }

    fn image_target(&self, name: &str) -> Result<Descriptor> {
        let mut client = ImagesClient::new(self.channel.clone());
        let request = self.request(GetImageRequest { name: name.to_string() });
        let response = self.runtime.block_on(client.get(request)).context("look up the image in containerd")?;
        let target = response.into_inner().image.and_then(|i| i.target).ok_or_else(|| anyhow!("containerd has no target for it"))?;
        Ok(Descriptor::new(MediaType::from(target.media_type.as_str()), target.size as u64, digest_of(&target.digest)?))
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, descriptor: &Descriptor) -> Result<T> {
        let digest = descriptor.digest().to_string();
        if descriptor.size() > MAX_METADATA_BYTES {
            bail!("{} {digest} is {} bytes, more than a manifest or config can be", descriptor.media_type(), descriptor.size());
        }
        let mut bytes = Vec::new();
        self.read_verified(descriptor.media_type().as_ref(), &digest, descriptor.size(), |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("parse {} {digest}", descriptor.media_type()))
    }

    /// Streams the blob `digest` (a `what`, in messages) to `each`, no more
    /// than its descriptor's `size`, then checks the content against size
    /// and digest.
    fn read_verified(&self, what: &str, digest: &str, size: u64, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut client = ContentClient::new(self.channel.clone());
        let request = self.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
        let mut hasher = Sha256::new();
        let mut read = SizeCheck::new(what, digest, size);
        self.runtime
            .block_on(async {
                let mut stream = client.read(request).await?.into_inner();
                while let Some(chunk) = stream.message().await? {
                    read.add(chunk.data.len())?;
                    hasher.update(&chunk.data);
                    each(&chunk.data)?;
                }
                anyhow::Ok(())
            })
            .with_context(|| format!("read {what} {digest} from containerd's content store"))?;
        read.finish()?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            bail!("{what} {digest} has digest {actual}: the content does not match");
        }
        Ok(())
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(namespace) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", namespace);
        }
        request
    }
}

/// Bytes read of a blob against what its descriptor says.
struct SizeCheck<'a> {
    what: &'a str,
    digest: &'a str,
    size: u64,
    read: u64,
}

impl<'a> SizeCheck<'a> {
    fn new(what: &'a str, digest: &'a str, size: u64) -> Self {
        SizeCheck { what, digest, size, read: 0 }
    }

    fn add(&mut self, bytes: usize) -> Result<()> {
        self.read += bytes as u64;
        if self.read > self.size {
            bail!("{} {} is larger than the {} bytes its descriptor says", self.what, self.digest, self.size);
        }
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        if self.read != self.size {
            bail!("{} {} is {} bytes, its descriptor says {}", self.what, self.digest, self.read, self.size);
        }
        Ok(())
    }
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex) || media_type.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn digest_of(text: &str) -> Result<oci_spec::image::Digest> {
    text.parse().map_err(|e| anyhow!("bad digest {text:?}: {e}"))
}

/// The index entry for wasm: platform architecture `wasm` and a WASI os.
fn wasm_entry(index: &ImageIndex) -> Option<Descriptor> {
    index
        .manifests()
        .iter()
        .find(|entry| {
            entry.platform().as_ref().is_some_and(|p| p.architecture().to_string() == "wasm" && WASM_OS.contains(&p.os().to_string().as_str()))
        })
        .cloned()
}

/// The digest and size of the wasm layer to run, or None when the image has no wasm
/// layers (a plain image: its rootfs holds the module). An image with a
/// wasm config but other layers, or several wasm layers that `name` does
/// not choose between, is an error.
fn choose_layer(manifest: &ImageManifest, name: Option<&str>) -> Result<Option<(String, u64)>> {
    let is_wasm = |layer: &&Descriptor| WASM_LAYERS.contains(&layer.media_type().to_string().as_str());
    let wasm_config = manifest.config().media_type().to_string() == WASM_CONFIG;
    let wasm_layers: Vec<&Descriptor> = manifest.layers().iter().filter(is_wasm).collect();
    if wasm_layers.is_empty() && !wasm_config {
        return Ok(None);
    }
    if let Some(other) = manifest.layers().iter().find(|layer| !is_wasm(layer)) {
        bail!(
            "layer {} has media type {}, which is not a wasm layer ({})",
            other.digest(),
            other.media_type(),
            WASM_LAYERS.join(", ")
        );
    }
    let chosen = match wasm_layers.as_slice() {
        [] => bail!("it is a wasm artifact without a wasm layer"),
        [only] => *only,
        several => {
            let wanted = name.map(|n| n.rsplit('/').next().unwrap_or(n));
            let titled = |layer: &&&Descriptor| {
                let title = layer.annotations().as_ref().and_then(|a| a.get(TITLE_ANNOTATION));
                title.is_some() && title.map(String::as_str) == wanted
            };
            match several.iter().find(titled) {
                Some(layer) => *layer,
                None => bail!(
                    "it has {} wasm layers and the container's command ({}) names none of them by its {TITLE_ANNOTATION}",
                    several.len(),
                    name.unwrap_or("none")
                ),
            }
        }
    };
    Ok(Some((chosen.digest().to_string(), chosen.size())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config_type: &str, layers: &[(&str, &str, Option<&str>)]) -> ImageManifest {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media_type, hex, title)| {
                let mut layer = serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{}", hex.repeat(64)), "size": 1});
                if let Some(title) = title {
                    layer["annotations"] = serde_json::json!({ TITLE_ANNOTATION: title });
                }
                layer
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type, "digest": format!("sha256:{}", "c".repeat(64)), "size": 1},
            "layers": layers,
        }))
        .unwrap()
    }

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    #[test]
    fn plain_images_have_no_wasm_layer() {
        assert_eq!(choose_layer(&manifest(OCI_CONFIG, &[(TAR, "a", None)]), None).unwrap(), None);
    }

    #[test]
    fn every_wasm_layer_type_is_taken() {
        for media_type in WASM_LAYERS {
            let chosen = choose_layer(&manifest(WASM_CONFIG, &[(media_type, "a", None)]), None).unwrap();
            assert_eq!(chosen, Some((format!("sha256:{}", "a".repeat(64)), 1)), "{media_type}");
        }
    }

    #[test]
    fn a_title_chooses_among_several_layers() {
        let m = manifest(WASM_CONFIG, &[("application/wasm", "a", Some("one.wasm")), ("application/wasm", "b", Some("two.wasm"))]);
        assert_eq!(choose_layer(&m, Some("/two.wasm")).unwrap(), Some((format!("sha256:{}", "b".repeat(64)), 1)));
        let err = choose_layer(&m, Some("three.wasm")).unwrap_err().to_string();
        assert!(err.contains("2 wasm layers and the container's command (three.wasm) names none"), "{err}");
    }

    #[test]
    fn unknown_layer_types_and_empty_artifacts_are_errors() {
        let err = choose_layer(&manifest(WASM_CONFIG, &[("application/x-foo", "a", None)]), None).unwrap_err().to_string();
        assert!(err.contains("has media type application/x-foo, which is not a wasm layer"), "{err}");
        let err = choose_layer(&manifest(OCI_CONFIG, &[("application/wasm", "a", None), (TAR, "b", None)]), None).unwrap_err();
        assert!(err.to_string().contains(TAR), "{err}");
        let err = choose_layer(&manifest(WASM_CONFIG, &[]), None).unwrap_err().to_string();
        assert!(err.contains("without a wasm layer"), "{err}");
    }

    #[test]
    fn a_blob_keeps_to_its_descriptors_size() {
        let mut check = SizeCheck::new("layer", "sha256:x", 10);
        check.add(6).unwrap();
        let err = check.add(6).unwrap_err().to_string();
        assert!(err.contains("larger than the 10 bytes its descriptor says"), "{err}");
        let mut short = SizeCheck::new("layer", "sha256:x", 10);
        short.add(4).unwrap();
        assert!(short.finish().unwrap_err().to_string().contains("is 4 bytes, its descriptor says 10"));
    }

    #[test]
    fn the_index_entry_for_wasm_is_found() {
        let entry = |os: &str, arch: &str, hex: &str| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", hex.repeat(64)), "size": 1,
                "platform": {"os": os, "architecture": arch}})
        };
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry("linux", "amd64", "a"), entry("wasi", "wasm", "b")],
        }))
        .unwrap();
        assert_eq!(wasm_entry(&index).unwrap().digest().to_string(), format!("sha256:{}", "b".repeat(64)));
    }
}
