//! Which identity a volume uses: exactly one of pod identity (NMI), the node's managed
//! identity (IMDS), a service principal from the pod's secretRef (client secret or client
//! certificate), or workload identity (the pod's own projected service-account token).

use crate::error::{printable, Code, Error, Result};
use crate::render::ClientCertificate;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::raw::RawOptions;
use super::values::validate_client_id;
use super::Pod;

/// How kv gets its Azure AD token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// aad-pod-identity's NMI on the node, for the pod's own identity.
    PodIdentity {
        /// NMI port; `None` = the node config's default (2579).
        nmi_port: Option<u16>,
    },
    /// The node's managed identity through IMDS.
    NodeManagedIdentity {
        /// Which one.
        id: ManagedIdentity,
    },
    /// A service principal whose credential comes from the pod's secretRef.
    ServicePrincipal {
        /// Application (client) id.
        client_id: String,
        /// Its secret or certificate.
        credential: ClientCredential,
    },
    /// Azure AD workload identity: the pod's projected service-account token, exchanged at
    /// AAD for a token of the identity federated with the pod's service account.
    WorkloadIdentity {
        /// The application or user-assigned identity federated with the service account.
        client_id: String,
        /// Where the token is in the pod's projected volumes.
        token: TokenPath,
    },
}

/// One of the node's managed identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentity {
    /// The VM's system-assigned identity.
    System,
    /// A user-assigned identity by client id (`vmmanagedidentityclientid`).
    ClientId(String),
    /// A user-assigned identity by resource id (`vmmanagedidentityresourceid`).
    ResourceId(String),
}

/// A service principal's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredential {
    /// `clientsecret`.
    Secret(Secret),
    /// `clientcertificate` (PEM) or `clientcertificatepfx` (PKCS#12): signs a client assertion.
    Certificate(Arc<ClientCertificate>),
}

impl PartialEq for ClientCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert_der == other.cert_der && *self.key_pkcs8 == *other.key_pkcs8
    }
}
impl Eq for ClientCertificate {}

/// A file in one of the pod's projected volumes: `<volume>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPath {
    /// The projected volume's name.
    pub volume: String,
    /// The file in it.
    pub file: String,
}

/// Where a workload-identity token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFile {
    /// A projected volume of the pod: `<volumes>/kubernetes.io~projected/<volume>/<file>`.
    Projected {
        /// The pod's `volumes` directory under kubelet's root.
        volumes: PathBuf,
        /// The volume and file.
        path: TokenPath,
    },
    /// A file an operator named (`kv fetch --token-file`).
    File {
        /// The file.
        path: PathBuf,
        /// The operator named the namespace and service account the token must be bound to
        /// (`--namespace`, `--service-account`): only then may the node's token cache answer.
        bound: bool,
    },
}

impl TokenFile {
    /// The token of the pod whose volume is mounted at `mount_dir`
    /// (`<root>/pods/<uid>/volumes/azure~kv/<name>`); the uid in the path must be the pod's.
    pub fn for_mount(mount_dir: &Path, pod: &Pod, path: &TokenPath) -> Result<TokenFile> {
        let volumes = mount_dir
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::new(Code::Dir, "the mount dir has no pod volumes dir"))?;
        let uid = volumes
            .parent()
            .and_then(Path::file_name)
            .and_then(|u| u.to_str());
        if uid.is_none() || uid != pod.uid.as_deref() {
            return Err(Error::new(
                Code::Dir,
                format!(
                    "the mount dir belongs to pod uid {} but kubernetes.io/pod.uid is {}: kv reads a workload-identity token only from the pod being mounted",
                    uid.unwrap_or("?"),
                    pod.uid.as_deref().unwrap_or("?")
                ),
            ));
        }
        Ok(TokenFile::Projected {
            volumes: volumes.to_path_buf(),
            path: path.clone(),
        })
    }

    /// How a message names it.
    pub fn describe(&self) -> String {
        match self {
            TokenFile::Projected { path, .. } => {
                format!("projected volume `{}` file `{}`", path.volume, path.file)
            }
            TokenFile::File { path, .. } => format!("token file {}", path.display()),
        }
    }
}

/// The audience a workload-identity token must carry (what AAD accepts for the exchange).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The projected volume and file the workload-identity webhook injects.
pub const DEFAULT_TOKEN_PATH: (&str, &str) = ("azure-identity-token", "azure-identity-token");

impl Identity {
    /// A short, secret-free description for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Identity::PodIdentity { .. } => "pod identity (NMI)".into(),
            Identity::NodeManagedIdentity {
                id: ManagedIdentity::System,
            } => "node system-assigned managed identity".into(),
            Identity::NodeManagedIdentity {
                id: ManagedIdentity::ClientId(id),
            } => format!("node user-assigned managed identity {id}"),
            Identity::NodeManagedIdentity {
                id: ManagedIdentity::ResourceId(id),
            } => format!("node user-assigned managed identity {id}"),
            Identity::ServicePrincipal {
                client_id,
                credential: ClientCredential::Secret(_),
            } => format!("service principal {client_id}"),
            Identity::ServicePrincipal {
                client_id,
                credential: ClientCredential::Certificate(_),
            } => format!("service principal {client_id} (certificate)"),
            Identity::WorkloadIdentity { client_id, .. } => {
                format!("workload identity {client_id}")
            }
        }
    }
}

pub(super) fn parse_identity(raw: &RawOptions, pod: &Pod) -> Result<Identity> {
    let pod_identity = raw.bool("usepodidentity")?;
    let node_identity = raw.bool("usevmmanagedidentity")?;
    let workload_identity = raw.bool("useworkloadidentity")?;
    let has_sp = [
        "clientid",
        "clientsecret",
        "clientcertificate",
        "clientcertificatepfx",
    ]
    .iter()
    .any(|k| raw.get(&format!("kubernetes.io/secret/{k}")).is_some());
    let node_client_id = raw.get("vmmanagedidentityclientid").map(str::to_string);
    let node_resource_id = raw.get("vmmanagedidentityresourceid").map(str::to_string);
    let workload_client_id = raw.get("clientid").map(str::to_string);
    let token_path = raw.get("workloadidentitytokenpath");
    let nmi_port = raw
        .get("nmiport")
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::options(format!("nmiport \"{}\" is not a TCP port", printable(p)))
            })
        })
        .transpose()?;

    let chosen: Vec<&str> = [
        (pod_identity, "usepodidentity"),
        (node_identity, "usevmmanagedidentity"),
        (workload_identity, "useworkloadidentity"),
        (has_sp, "a secretRef service principal"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect();
    if chosen.len() > 1 {
        return Err(Error::options(format!(
            "the options select more than one identity ({}); choose exactly one",
            chosen.join(" and ")
        )));
    }
    // Options that belong to one mode are errors in another: a typo must not silently pick
    // a different identity than the pod author meant.
    for (given, key, mode, on) in [
        (
            node_client_id.is_some(),
            "vmmanagedidentityclientid",
            "usevmmanagedidentity",
            node_identity,
        ),
        (
            node_resource_id.is_some(),
            "vmmanagedidentityresourceid",
            "usevmmanagedidentity",
            node_identity,
        ),
        (
            nmi_port.is_some(),
            "nmiport",
            "usepodidentity",
            pod_identity,
        ),
        (
            workload_client_id.is_some(),
            "clientid",
            "useworkloadidentity",
            workload_identity,
        ),
        (
            token_path.is_some(),
            "workloadidentitytokenpath",
            "useworkloadidentity",
            workload_identity,
        ),
    ] {
        if given && !on {
            return Err(Error::options(format!(
                "{key} is set but {mode} is not \"true\"; set it, or remove {key}{}",
                if key == "clientid" {
                    " (a service principal's client id goes in the secretRef Secret)"
                } else {
                    ""
                }
            )));
        }
    }
    if pod_identity {
        if pod.name.is_none() || pod.namespace.is_none() {
            return Err(Error::options(
                "usepodidentity needs kubernetes.io/pod.name and kubernetes.io/pod.namespace, which kubelet 1.7+ sends; call kv as kubelet does",
            ));
        }
        return Ok(Identity::PodIdentity { nmi_port });
    }
    if node_identity {
        let id = match (node_client_id, node_resource_id) {
            (Some(_), Some(_)) => {
                return Err(Error::options(
                    "vmmanagedidentityclientid and vmmanagedidentityresourceid both name an identity; keep one",
                ))
            }
            (Some(id), None) => {
                validate_client_id("vmmanagedidentityclientid", &id)?;
                ManagedIdentity::ClientId(id)
            }
            (None, Some(id)) => {
                validate_resource_id(&id)?;
                ManagedIdentity::ResourceId(id)
            }
            (None, None) => ManagedIdentity::System,
        };
        return Ok(Identity::NodeManagedIdentity { id });
    }
    if workload_identity {
        return workload(pod, workload_client_id, token_path);
    }
    if has_sp {
        return service_principal(raw);
    }
    Err(Error::options(
        "no identity selected: set usepodidentity, usevmmanagedidentity or useworkloadidentity to \"true\", or reference a Secret of type azure/kv holding clientid and clientsecret (or clientcertificate) with secretRef",
    ))
}

fn workload(pod: &Pod, client_id: Option<String>, token_path: Option<&str>) -> Result<Identity> {
    let client_id = client_id.ok_or_else(|| {
        Error::options(
            "useworkloadidentity needs `clientid`: the client id of the application or user-assigned identity federated with the pod's service account",
        )
    })?;
    validate_client_id("clientid", &client_id)?;
    if pod.uid.is_none() || pod.namespace.is_none() || pod.service_account.is_none() {
        return Err(Error::options(
            "useworkloadidentity needs kubernetes.io/pod.uid, kubernetes.io/pod.namespace and kubernetes.io/serviceAccount.name, which kubelet sends; call kv as kubelet does",
        ));
    }
    let token = match token_path {
        None => TokenPath {
            volume: DEFAULT_TOKEN_PATH.0.into(),
            file: DEFAULT_TOKEN_PATH.1.into(),
        },
        Some(p) => {
            let bad = || {
                Error::options(format!(
                    "workloadidentitytokenpath \"{}\" is not <projected volume>/<file>, e.g. \"azure-identity-token/azure-identity-token\"",
                    printable(p)
                ))
            };
            let (volume, file) = p.split_once('/').ok_or_else(bad)?;
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && !s.starts_with('.')
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            if !ok(volume) || !ok(file) {
                return Err(bad());
            }
            TokenPath {
                volume: volume.into(),
                file: file.into(),
            }
        }
    };
    Ok(Identity::WorkloadIdentity { client_id, token })
}

fn service_principal(raw: &RawOptions) -> Result<Identity> {
    let client_id = raw.secret_ref("clientid")?.ok_or_else(|| {
        Error::options("the secretRef Secret has no `clientid`: add the application (client) id")
    })?;
    validate_client_id("secretRef clientid", client_id.expose())?;
    let secret = raw.secret_ref("clientsecret")?;
    let pem = raw.secret_ref("clientcertificate")?;
    let pfx = raw.secret_ref_bytes("clientcertificatepfx")?;
    let password = raw.secret_ref("clientcertificatepassword")?;
    let credential = match (secret, pem, pfx) {
        (Some(secret), None, None) => ClientCredential::Secret(secret),
        (None, Some(pem), None) => ClientCredential::Certificate(Arc::new(
            crate::render::client_certificate("secretRef clientcertificate", Some(pem.expose()), None)
                .map_err(|e| Error::options(format!("{e}")))?,
        )),
        (None, None, Some(pfx)) => {
            // The Secret may hold the PKCS#12 file itself or its base64 text.
            let der = if pfx.first() == Some(&0x30) {
                pfx
            } else {
                use base64::Engine;
                let text = std::str::from_utf8(&pfx).unwrap_or_default();
                zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|_| {
                            Error::options(
                                "secretRef clientcertificatepfx is neither a PKCS#12 file nor its base64",
                            )
                        })?,
                )
            };
            ClientCredential::Certificate(Arc::new(
                crate::render::client_certificate(
                    "secretRef clientcertificatepfx",
                    None,
                    Some((&der, password.as_ref().map(Secret::expose))),
                )
                .map_err(|e| Error::options(format!("{e}")))?,
            ))
        }
        (None, None, None) => {
            return Err(Error::options(
                "the secretRef Secret has `clientid` but no credential; add `clientsecret`, or `clientcertificate` (PEM) / `clientcertificatepfx` (kubectl create secret generic ... --type=azure/kv)",
            ))
        }
        _ => {
            return Err(Error::options(
                "the secretRef Secret holds more than one credential (clientsecret, clientcertificate, clientcertificatepfx); keep one",
            ))
        }
    };
    Ok(Identity::ServicePrincipal {
        client_id: client_id.expose().to_string(),
        credential,
    })
}

/// `/subscriptions/<id>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`.
fn validate_resource_id(id: &str) -> Result<()> {
    let lower = id.to_ascii_lowercase();
    let ok = id.len() <= 512
        && lower.starts_with("/subscriptions/")
        && lower.contains("/providers/microsoft.managedidentity/userassignedidentities/")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.()".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "vmmanagedidentityresourceid \"{}\" is not a user-assigned identity's resource id (/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>)",
            printable(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_dir_names_the_pod() {
        let pod = Pod {
            uid: Some("u1".into()),
            ..Pod::default()
        };
        let path = TokenPath {
            volume: "v".into(),
            file: "f".into(),
        };
        let f =
            TokenFile::for_mount(Path::new("/k/pods/u1/volumes/azure~kv/s"), &pod, &path).unwrap();
        assert_eq!(
            f,
            TokenFile::Projected {
                volumes: "/k/pods/u1/volumes".into(),
                path: path.clone()
            }
        );
        let e = TokenFile::for_mount(Path::new("/k/pods/u2/volumes/azure~kv/s"), &pod, &path)
            .unwrap_err();
        assert_eq!(e.code(), Code::Dir);
    }
}
