//! The few Kubernetes API calls the installer makes, with the pod's service
//! account: label or unlabel its node, take and give back a restart slot
//! (a Lease), and (the uninstall hook) switch the installer DaemonSet to
//! uninstall and watch the labels go.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// Where Kubernetes mounts a pod's service account token and CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub struct Kube {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Kube {
    /// A client for the API server the pod's environment names, with the
    /// service account's token and CA (from $WASMLET_SERVICE_ACCOUNT_DIR
    /// when set, for tests against a stand-in server).
    pub fn in_cluster() -> Result<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST is not set: not running in a pod?")?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let dir = std::env::var_os("WASMLET_SERVICE_ACCOUNT_DIR").map(PathBuf::from).unwrap_or_else(|| SERVICE_ACCOUNT_DIR.into());
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("read the service account's {}", path.display()))
        };
        let token = String::from_utf8(read("token")?).context("the service account token is not text")?.trim().to_string();
        let ca = read("ca.crt")?;
        let certs = ureq::tls::parse_pem(&ca)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            })
            .collect::<Result<Vec<Certificate<'static>>, _>>()
            .context("parse the service account's ca.crt")?;
        if certs.is_empty() {
            bail!("the service account's ca.crt holds no certificate");
        }
        let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(certs))).build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build();
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Ok(Self { agent: config.into(), base: format!("https://{host}:{port}"), token })
    }

    /// Sets the node's label to `value`, or removes it (None).
    pub fn label_node(&self, node: &str, label: &str, value: Option<&str>) -> Result<()> {
        let patch = json!({"metadata": {"labels": {label: value}}});
        self.merge_patch(&format!("/api/v1/nodes/{node}"), &patch).with_context(|| format!("label node {node}"))
    }

    /// Sets an annotation on a DaemonSet's pod template, which rolls its pods.
    pub fn annotate_pod_template(&self, namespace: &str, daemonset: &str, key: &str, value: &str) -> Result<()> {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {key: value}}}}});
        let path = format!("/apis/apps/v1/namespaces/{namespace}/daemonsets/{daemonset}");
        self.merge_patch(&path, &patch).with_context(|| format!("update DaemonSet {namespace}/{daemonset}"))
    }

    /// The names of the nodes that have `label`.
    pub fn nodes_with_label(&self, label: &str) -> Result<Vec<String>> {
        let response = self
            .agent
            .get(format!("{}/api/v1/nodes", self.base))
            .query("labelSelector", label)
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .context("list nodes")?;
        let list = json_of(response).context("list nodes")?;
        let items = list["items"].as_array().context("list nodes: the answer has no items")?;
        Ok(items.iter().filter_map(|node| node["metadata"]["name"].as_str().map(String::from)).collect())
    }

    /// The Lease `name`, or None if there is none.
    pub fn get_lease(&self, namespace: &str, name: &str) -> Result<Option<Value>> {
        let response = self
            .agent
            .get(format!("{}{}/{name}", self.base, leases(namespace)))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("read Lease {namespace}/{name}"))?;
        if response.status() == 404 {
            return Ok(None);
        }
        json_of(response).map(Some).with_context(|| format!("read Lease {namespace}/{name}"))
    }

    /// Creates `lease`; Conflict when it exists already.
    pub fn create_lease(&self, namespace: &str, lease: &Value) -> Result<Written> {
        let request = self.agent.post(format!("{}{}", self.base, leases(namespace)));
        let response = request.header("Authorization", format!("Bearer {}", self.token)).content_type("application/json").send(lease.to_string())?;
        written(response).context("create a Lease")
    }

    /// Replaces the Lease `name` with `lease`, whose resourceVersion must
    /// still be the Lease's: Conflict when it changed since it was read.
    pub fn update_lease(&self, namespace: &str, name: &str, lease: &Value) -> Result<Written> {
        let request = self.agent.put(format!("{}{}/{name}", self.base, leases(namespace)));
        let response = request.header("Authorization", format!("Bearer {}", self.token)).content_type("application/json").send(lease.to_string())?;
        written(response).with_context(|| format!("update Lease {namespace}/{name}"))
    }

    fn merge_patch(&self, path: &str, patch: &Value) -> Result<()> {
        let response = self
            .agent
            .patch(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .content_type("application/merge-patch+json")
            .send(patch.to_string())?;
        json_of(response).map(drop)
    }
}

/// Whether a create or update was made, or another writer came first.
pub enum Written {
    Done,
    Conflict,
}

fn leases(namespace: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
}

fn written(response: ureq::http::Response<ureq::Body>) -> Result<Written> {
    if response.status() == 409 {
        return Ok(Written::Conflict);
    }
    json_of(response).map(|_| Written::Done)
}

/// The JSON body of a 2xx answer, or an error with the API's message.
fn json_of(mut response: ureq::http::Response<ureq::Body>) -> Result<Value> {
    let status = response.status();
    let body = response.body_mut().read_to_string().context("read the API server's answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["message"].as_str().map(String::from)).unwrap_or(body);
        bail!("the API server answered {status}: {message}");
    }
    serde_json::from_str(&body).context("the API server's answer is not JSON")
}
