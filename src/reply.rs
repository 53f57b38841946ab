//! The reply kubelet parses: the only code in the driver that writes to stdout.

use crate::error::Error;
use serde::Serialize;
use std::io::Write;

/// `init` capabilities, every one stated so no kubelet default applies by accident.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Nothing to attach: the volume is a tmpfs made on the node.
    pub attach: bool,
    /// Let the container runtime relabel the tmpfs on SELinux nodes (it stays writable for that).
    pub selinux_relabel: bool,
    /// kv applies fsGroup itself with tight modes; kubelet's recursive chmod would widen them.
    pub fs_group: bool,
    /// statfs on a tmpfs is free, so kubelet may report volume usage.
    pub supports_metrics: bool,
    /// A tmpfs is never resized.
    #[serde(rename = "requiresFSResize")]
    pub requires_fs_resize: bool,
}

impl Capabilities {
    /// What `kv init` declares.
    pub const KV: Capabilities = Capabilities {
        attach: false,
        selinux_relabel: true,
        fs_group: false,
        supports_metrics: true,
        requires_fs_resize: false,
    };
}

/// One FlexVolume reply: `status` is exactly `Success`, `Failure` or `Not supported`.
#[derive(Debug, Serialize)]
pub struct Reply {
    /// The status kubelet matches on.
    pub status: &'static str,
    /// Shown in the pod's FailedMount event; never secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Only for `init`; never `null` (kubelet would dereference it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

impl Reply {
    /// A plain success.
    pub fn success() -> Self {
        Reply {
            status: "Success",
            message: None,
            capabilities: None,
        }
    }

    /// The `init` reply.
    pub fn init() -> Self {
        Reply {
            capabilities: Some(Capabilities::KV),
            ..Reply::success()
        }
    }

    /// A verb kv does not implement; kubelet falls back to its defaults.
    pub fn not_supported() -> Self {
        Reply {
            status: "Not supported",
            message: None,
            capabilities: None,
        }
    }

    /// A failure with its catalogue code in front.
    pub fn failure(err: &Error) -> Self {
        Reply {
            status: "Failure",
            message: Some(err.to_string()),
            capabilities: None,
        }
    }

    /// Serialises the reply: one JSON object and a newline.
    pub fn to_line(&self) -> String {
        // Serialising a struct of strings and bools cannot fail; fall back to a fixed reply anyway.
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"status":"Failure","message":"KV_INTERNAL: reply"}"#.into());
        line.push('\n');
        line
    }

    /// Writes the reply to stdout in one write and flushes.
    pub fn emit(&self) {
        let line = self.to_line();
        let mut out = std::io::stdout().lock();
        // Nothing else can be done if stdout is gone; kubelet will report the empty output.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn init_states_every_capability() {
        let v: serde_json::Value = serde_json::from_str(&Reply::init().to_line()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":"Success","capabilities":{"attach":false,"selinuxRelabel":true,
                "fsGroup":false,"supportsMetrics":true,"requiresFSResize":false}})
        );
    }

    #[test]
    fn failure_carries_code_and_no_capabilities() {
        let r = Reply::failure(&Error::new(Code::Options, "bad\r\nthing"));
        assert_eq!(
            r.to_line(),
            "{\"status\":\"Failure\",\"message\":\"KV_OPTIONS: bad  thing\"}\n"
        );
        assert_eq!(
            Reply::not_supported().to_line(),
            "{\"status\":\"Not supported\"}\n"
        );
    }
}
