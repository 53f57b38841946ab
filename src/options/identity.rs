//! Which identity a volume uses: exactly one of pod identity (NMI), the node's managed
//! identity (IMDS) or a service principal from the pod's secretRef.

use crate::error::{printable, Error, Result};
use crate::secret::Secret;

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
    /// The node's managed identity through IMDS; `client_id` selects a user-assigned one.
    NodeManagedIdentity {
        /// User-assigned identity client id; `None` = system-assigned.
        client_id: Option<String>,
    },
    /// A service principal whose client secret comes from the pod's secretRef.
    ServicePrincipal {
        /// Application (client) id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
    },
}

impl Identity {
    /// A short, secret-free description for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Identity::PodIdentity { .. } => "pod identity (NMI)".into(),
            Identity::NodeManagedIdentity { client_id: None } => {
                "node system-assigned managed identity".into()
            }
            Identity::NodeManagedIdentity {
                client_id: Some(id),
            } => {
                format!("node user-assigned managed identity {id}")
            }
            Identity::ServicePrincipal { client_id, .. } => {
                format!("service principal {client_id}")
            }
        }
    }
}

pub(super) fn parse_identity(raw: &RawOptions, pod: &Pod) -> Result<Identity> {
    let pod_identity = raw.bool("usepodidentity")?;
    let node_identity = raw.bool("usevmmanagedidentity")?;
    let client_id = raw.secret_ref("clientid")?;
    let client_secret = raw.secret_ref("clientsecret")?;
    let has_sp = client_id.is_some() || client_secret.is_some();
    let node_client_id = raw.get("vmmanagedidentityclientid").map(str::to_string);
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
        (has_sp, "a secretRef with clientid/clientsecret"),
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
    if node_client_id.is_some() && !node_identity {
        return Err(Error::options(
            "vmmanagedidentityclientid is set but usevmmanagedidentity is not \"true\"; set it, or remove the client id",
        ));
    }
    if nmi_port.is_some() && !pod_identity {
        return Err(Error::options(
            "nmiport is set but usepodidentity is not \"true\"; set it, or remove nmiport",
        ));
    }
    if let Some(id) = &node_client_id {
        validate_client_id("vmmanagedidentityclientid", id)?;
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
        return Ok(Identity::NodeManagedIdentity {
            client_id: node_client_id,
        });
    }
    match (client_id, client_secret) {
        (Some(id), Some(secret)) => {
            validate_client_id("secretRef clientid", id.expose())?;
            Ok(Identity::ServicePrincipal {
                client_id: id.expose().to_string(),
                client_secret: secret,
            })
        }
        (Some(_), None) => Err(Error::options(
            "the secretRef Secret has `clientid` but no `clientsecret`; add it (kubectl create secret generic ... --from-literal clientsecret=... --type=azure/kv)",
        )),
        (None, Some(_)) => Err(Error::options(
            "the secretRef Secret has `clientsecret` but no `clientid`; add it",
        )),
        (None, None) => Err(Error::options(
            "no identity selected: set usepodidentity or usevmmanagedidentity to \"true\", or reference a Secret of type azure/kv holding clientid and clientsecret with secretRef",
        )),
    }
}
