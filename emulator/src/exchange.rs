//! A request as the handlers see it and the answer they give, independent of the HTTP stack.

use bytes::Bytes;
use std::net::SocketAddr;

/// A handler's answer.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Client id of the identity the request was about, when known (for the log).
    pub identity: Option<String>,
}

impl Resp {
    pub fn json(status: u16, v: &serde_json::Value) -> Resp {
        Resp {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: v.to_string().into_bytes(),
            identity: None,
        }
    }

    pub fn json_ct(status: u16, ct: &str, body: String) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), ct.into())],
            body: body.into_bytes(),
            identity: None,
        }
    }

    /// Go `http.Error`: text/plain, message + "\n", nosniff.
    pub fn text(status: u16, msg: &str) -> Resp {
        Resp {
            status,
            headers: vec![
                ("Content-Type".into(), "text/plain; charset=utf-8".into()),
                ("X-Content-Type-Options".into(), "nosniff".into()),
            ],
            body: format!("{msg}\n").into_bytes(),
            identity: None,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn with_identity(mut self, id: Option<String>) -> Resp {
        if self.identity.is_none() {
            self.identity = id;
        }
        self
    }
}

/// A parsed request as handlers see it.
pub struct Req {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn q(&self, key: &str) -> Option<&str> {
        crate::util::get(&self.query, key)
    }
}
