//! The pod's own service-account token, from the projected volume kubelet writes it to, for
//! workload identity.
//!
//! kubelet lays a projected volume out as `<pods>/<uid>/volumes/kubernetes.io~projected/<volume>/`
//! holding a timestamped directory, a `..data` link to it, and per-file links through
//! `..data`. kv opens the volume directory without following any link on the way (kubelet
//! creates real directories), then the file with `openat2(RESOLVE_BENEATH)` from that
//! directory: kubelet's own links inside it resolve, anything that leaves it is refused. A pod
//! can therefore not point kv at another pod's token or at a host file.
//!
//! kubelet sets a pod's volumes up concurrently, so the token may not exist yet when kv runs:
//! kv waits for it within the call's deadline.

use super::jwt::{self, Claims};
use crate::error::{Code, Error, Result};
use crate::options::{Pod, TokenFile, TOKEN_EXCHANGE_AUDIENCE};
use crate::retry::Deadline;
use crate::secret::Secret;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::path::Path;
use std::time::Duration;

/// The most bytes a token file may hold (Kubernetes tokens are 1–2 KB).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// How often kv looks again for a token kubelet has not written yet.
const POLL: Duration = Duration::from_millis(100);

/// Reads the token, waiting within `deadline` while it does not exist yet.
pub async fn read(file: &TokenFile, deadline: &Deadline) -> Result<Secret> {
    loop {
        match read_once(file) {
            Ok(token) => return Ok(token),
            Err(Missing::Not(e)) => return Err(e),
            Err(Missing::Yet) => {
                if deadline.remaining() <= POLL {
                    return Err(Error::new(
                        Code::SaToken,
                        format!(
                            "timed out after {}s waiting for the pod's service-account token ({}): declare a projected serviceAccountToken volume with audience {TOKEN_EXCHANGE_AUDIENCE} (the workload-identity webhook adds one named azure-identity-token when the pod is labelled azure.workload.identity/use: \"true\")",
                            deadline.total().as_secs_f64(),
                            file.describe()
                        ),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

enum Missing {
    /// Not there (yet): kubelet may still be writing the pod's volumes.
    Yet,
    /// There, but refused.
    Not(Error),
}

fn read_once(file: &TokenFile) -> std::result::Result<Secret, Missing> {
    let refused = |why: String| {
        Missing::Not(Error::new(
            Code::SaToken,
            format!(
                "the pod's service-account token ({}) {why}",
                file.describe()
            ),
        ))
    };
    let fd = match file {
        TokenFile::File { path, .. } => rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ),
        TokenFile::Projected { volumes, path } => {
            let dir = match open_volume_dir(volumes, &path.volume) {
                Ok(d) => d,
                Err(rustix::io::Errno::NOENT) => return Err(Missing::Yet),
                Err(e) => {
                    return Err(refused(format!(
                        "cannot be reached without following a link ({e})"
                    )))
                }
            };
            rustix::fs::openat2(
                &dir,
                path.file.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            )
        }
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(Missing::Yet),
        Err(rustix::io::Errno::XDEV) | Err(rustix::io::Errno::LOOP) => {
            return Err(refused(
                "links outside its volume; kv reads only the pod's own projected token".into(),
            ))
        }
        Err(e) => return Err(refused(format!("cannot be opened ({e})"))),
    };
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() > MAX_TOKEN_BYTES {
                    return Err(refused(format!("is larger than {MAX_TOKEN_BYTES} bytes")));
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(refused(format!("cannot be read ({e})"))),
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| refused("is not text".into()))?;
    let token = Secret::new(text.trim().to_string());
    if token.expose().is_empty() {
        // kubelet writes the file whole through a rename; empty means not written yet.
        return Err(Missing::Yet);
    }
    Ok(token)
}

/// `<volumes>/kubernetes.io~projected/<volume>`, each step `O_NOFOLLOW`.
fn open_volume_dir(volumes: &Path, volume: &str) -> rustix::io::Result<rustix::fd::OwnedFd> {
    let dir = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let base = rustix::fs::open(volumes, dir, Mode::empty())?;
    let projected = rustix::fs::openat(&base, "kubernetes.io~projected", dir, Mode::empty())?;
    rustix::fs::openat(&projected, volume, dir, Mode::empty())
}

/// What a workload-identity token must be bound to: the pod's namespace and service account
/// and, for a pod's own token, the pod's uid. Bound service-account tokens (what kubelet
/// projects) carry them in their `kubernetes.io` claim; a JWT planted in a configMap or secret
/// projection, or copied from another pod, does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The pod's uid (`None` for an operator's token file, which belongs to no pod).
    pub pod_uid: Option<String>,
}

impl Binding {
    /// The binding `token` must have: a pod's projected token is bound to the pod (kubelet gave
    /// its uid, namespace and service account); an operator's file to the namespace and service
    /// account named with it (`kv fetch --namespace --service-account`), or to nothing.
    pub fn for_token(token: &TokenFile, pod: &Pod) -> Result<Option<Binding>> {
        let (namespace, service_account) = (pod.namespace.clone(), pod.service_account.clone());
        let pod_uid = match token {
            TokenFile::Projected { .. } => match &pod.uid {
                Some(uid) => Some(uid.clone()),
                None => return Err(no_pod("kubernetes.io/pod.uid")),
            },
            TokenFile::File { bound: true, .. } => None,
            TokenFile::File { bound: false, .. } => return Ok(None),
        };
        Ok(Some(Binding {
            namespace: namespace.ok_or_else(|| no_pod("kubernetes.io/pod.namespace"))?,
            service_account: service_account
                .ok_or_else(|| no_pod("kubernetes.io/serviceAccount.name"))?,
            pod_uid,
        }))
    }

    /// `system:serviceaccount:<namespace>:<name>`.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

fn no_pod(key: &str) -> Error {
    Error::new(
        Code::SaToken,
        format!("workload identity needs the pod's {key}, which kubelet passes to every mount; kv cannot tell whose token it would send"),
    )
}

/// Checks the token before it is sent anywhere: the token-exchange audience, bound to the pod
/// and service account of `binding` (when known), not expired. Returns its claims.
pub fn check(token: &Secret, binding: Option<&Binding>, now: i64) -> Result<Claims> {
    let claims = jwt::claims(token.expose())?;
    if !claims
        .audiences
        .iter()
        .any(|a| a == TOKEN_EXCHANGE_AUDIENCE)
    {
        return Err(Error::new(
            Code::SaToken,
            format!(
                "the service-account token's audience is {:?}, not {TOKEN_EXCHANGE_AUDIENCE}: set `audience: {TOKEN_EXCHANGE_AUDIENCE}` on the projected serviceAccountToken",
                claims.audiences
            ),
        ));
    }
    if let Some(binding) = binding {
        check_binding(&claims, binding)?;
    }
    if claims.expires <= now {
        return Err(Error::new(
            Code::SaToken,
            format!(
                "the service-account token expired {}s ago: kubelet refreshes projected tokens; check the node's clock and kubelet",
                now - claims.expires
            ),
        ));
    }
    if claims.not_before.is_some_and(|nbf| nbf > now + 60) {
        return Err(Error::new(
            Code::SaToken,
            "the service-account token is not valid yet: check the node's clock",
        ));
    }
    Ok(claims)
}

/// The token's subject and `kubernetes.io` claims must name the binding's service account,
/// namespace and pod.
fn check_binding(claims: &Claims, binding: &Binding) -> Result<()> {
    let want = binding.subject();
    if claims.subject != want {
        return Err(Error::new(
            Code::SaToken,
            format!(
                "the service-account token is for {}, not this pod's {want}: kv sends only the pod's own token",
                crate::error::printable(&claims.subject)
            ),
        ));
    }
    let bound = &claims.bound;
    let (Some(namespace), Some(service_account)) = (&bound.namespace, &bound.service_account)
    else {
        return Err(Error::new(
            Code::SaToken,
            "the service-account token is not bound to a pod (no kubernetes.io namespace and service account claims): kv sends only a token the API server issued for the pod, projected by kubelet from a serviceAccountToken source, not a JWT from a configMap or secret",
        ));
    };
    if *namespace != binding.namespace || *service_account != binding.service_account {
        return Err(Error::new(
            Code::SaToken,
            format!(
                "the service-account token is bound to service account {}/{}, not {}/{}: kv sends only the pod's own token",
                crate::error::printable(namespace),
                crate::error::printable(service_account),
                binding.namespace,
                binding.service_account
            ),
        ));
    }
    if let Some(uid) = &binding.pod_uid {
        match &bound.pod_uid {
            Some(theirs) if theirs == uid => {}
            Some(theirs) => {
                return Err(Error::new(
                    Code::SaToken,
                    format!(
                        "the service-account token is bound to pod {}, not this pod {uid}: kv sends only the pod's own token",
                        crate::error::printable(theirs)
                    ),
                ))
            }
            None => {
                return Err(Error::new(
                    Code::SaToken,
                    format!("the service-account token is not bound to a pod (no kubernetes.io pod claim), not this pod {uid}: kv sends only a token the API server issued for the pod, projected by kubelet from a serviceAccountToken source, not a JWT from a configMap or secret"),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: serde_json::Value) -> Secret {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Secret::new(format!(
            "{}.{}.sig",
            b.encode("{}"),
            b.encode(claims.to_string())
        ))
    }

    #[test]
    fn claims_must_fit_the_pod() {
        let sub = "system:serviceaccount:app:web";
        let pod = serde_json::json!({"namespace": "app", "serviceaccount": {"name": "web", "uid": "s1"},
                                     "pod": {"name": "p", "uid": "u1"}});
        let binding = Binding {
            namespace: "app".into(),
            service_account: "web".into(),
            pod_uid: Some("u1".into()),
        };
        let good = jwt(
            serde_json::json!({"iss":"i","sub":sub,"aud":[TOKEN_EXCHANGE_AUDIENCE],
                                          "exp":2000,"kubernetes.io":pod}),
        );
        assert_eq!(check(&good, Some(&binding), 1000).unwrap().issuer, "i");
        let other_pod = serde_json::json!({"namespace": "app", "serviceaccount": {"name": "web"},
                                           "pod": {"name": "q", "uid": "u2"}});
        let other_sa = serde_json::json!({"namespace": "app", "serviceaccount": {"name": "db"},
                                          "pod": {"name": "p", "uid": "u1"}});
        let cases = [
            (
                serde_json::json!({"iss":"i","sub":sub,"aud":"api://other","exp":2000,"kubernetes.io":pod}),
                "audience",
            ),
            (
                serde_json::json!({"iss":"i","sub":"system:serviceaccount:other:web","aud":TOKEN_EXCHANGE_AUDIENCE,"exp":2000,"kubernetes.io":pod}),
                "not this pod's",
            ),
            (
                serde_json::json!({"iss":"i","sub":sub,"aud":TOKEN_EXCHANGE_AUDIENCE,"exp":999,"kubernetes.io":pod}),
                "expired",
            ),
            // A JWT with the right subject but from no pod (a configMap or secret projection).
            (
                serde_json::json!({"iss":"i","sub":sub,"aud":TOKEN_EXCHANGE_AUDIENCE,"exp":2000}),
                "not bound to a pod",
            ),
            (
                serde_json::json!({"iss":"i","sub":sub,"aud":TOKEN_EXCHANGE_AUDIENCE,"exp":2000,"kubernetes.io":other_pod}),
                "bound to pod u2, not this pod u1",
            ),
            (
                serde_json::json!({"iss":"i","sub":sub,"aud":TOKEN_EXCHANGE_AUDIENCE,"exp":2000,"kubernetes.io":other_sa}),
                "bound to service account app/db",
            ),
        ];
        for (claims, want) in cases {
            let e = check(&jwt(claims), Some(&binding), 1000).unwrap_err();
            assert_eq!(e.code(), Code::SaToken);
            assert!(e.message().contains(want), "{e}");
            assert!(!e.message().contains(".sig"), "the token leaked: {e}");
        }
        // An operator's file named with a namespace and service account: no pod to match.
        let operator = Binding {
            pod_uid: None,
            ..binding
        };
        let no_pod = serde_json::json!({"namespace": "app", "serviceaccount": {"name": "web"}});
        let token = jwt(
            serde_json::json!({"iss":"i","sub":sub,"aud":TOKEN_EXCHANGE_AUDIENCE,
                                           "exp":2000,"kubernetes.io":no_pod}),
        );
        assert!(check(&token, Some(&operator), 1000).is_ok());
        // Without a binding only audience and time are checked (and the cache is not used).
        let unbound =
            jwt(serde_json::json!({"iss":"i","sub":"x","aud":TOKEN_EXCHANGE_AUDIENCE,"exp":2000}));
        assert!(check(&unbound, None, 1000).is_ok());
    }
}
