//! Named Azure clouds and the node's custom cloud: where AAD and Key Vault live.

use crate::error::{Error, Result};
use serde::Deserialize;

/// The default cloud.
pub const PUBLIC: &str = "AzurePublicCloud";

/// Endpoints of a cloud that is not one of the named ones (Azure Stack, air-gapped).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomCloud {
    /// AAD authority host, e.g. `https://login.contoso.local`.
    pub authority_host: String,
    /// Key Vault DNS suffix, e.g. `vault.contoso.local`.
    pub key_vault_dns_suffix: String,
    /// Token resource for Key Vault, e.g. `https://vault.contoso.local`.
    pub key_vault_resource: String,
}

/// The endpoints kv needs from a cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    /// Canonical name.
    pub name: String,
    /// AAD authority host, no trailing slash.
    pub authority_host: String,
    /// `<vault>.<suffix>` is the vault host.
    pub vault_dns_suffix: String,
    /// The token resource for Key Vault, no trailing slash.
    pub vault_resource: String,
}

impl Cloud {
    fn named(name: &str, authority: &str, suffix: &str) -> Cloud {
        Cloud {
            name: name.into(),
            authority_host: authority.into(),
            vault_dns_suffix: suffix.into(),
            vault_resource: format!("https://{suffix}"),
        }
    }

    /// Resolves a cloud name (case-insensitive, go-autorest's names plus the newer spellings);
    /// `AzureStackCloud` takes the node's custom endpoints.
    pub fn resolve(name: &str, custom: Option<&CustomCloud>) -> Result<Cloud> {
        match name.to_ascii_uppercase().as_str() {
            "AZUREPUBLICCLOUD" | "AZURECLOUD" => Ok(Cloud::named(
                "AzurePublicCloud",
                "https://login.microsoftonline.com",
                "vault.azure.net",
            )),
            "AZURECHINACLOUD" => Ok(Cloud::named(
                "AzureChinaCloud",
                "https://login.chinacloudapi.cn",
                "vault.azure.cn",
            )),
            "AZUREUSGOVERNMENTCLOUD" | "AZUREUSGOVERNMENT" => Ok(Cloud::named(
                "AzureUSGovernmentCloud",
                "https://login.microsoftonline.us",
                "vault.usgovcloudapi.net",
            )),
            // Microsoft Cloud Deutschland closed in October 2021: its hosts must never get a
            // token again, whoever now answers at those names.
            "AZUREGERMANCLOUD" => Err(Error::options(
                "cloudname AzureGermanCloud: Microsoft Cloud Deutschland was closed in October 2021; vaults moved to AzurePublicCloud (the Germany regions), so drop cloudname or use AzurePublicCloud",
            )),
            "AZURESTACKCLOUD" => match custom {
                Some(c) => Ok(Cloud {
                    name: "AzureStackCloud".into(),
                    authority_host: c.authority_host.trim_end_matches('/').into(),
                    vault_dns_suffix: c.key_vault_dns_suffix.trim_matches('.').into(),
                    vault_resource: c.key_vault_resource.trim_end_matches('/').into(),
                }),
                None => Err(Error::options(
                    "cloudname AzureStackCloud needs the node config's customCloud endpoints; ask the cluster operator to set them in kv.json",
                )),
            },
            _ => Err(Error::options(format!(
                "cloudname \"{}\" is not a known cloud: use AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud or AzureStackCloud",
                crate::error::printable(name)
            ))),
        }
    }

    /// `https://<vault>.<suffix>/`.
    pub fn vault_url(&self, vault: &str) -> String {
        format!("https://{vault}.{}/", self.vault_dns_suffix)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::NodeConfig;

    #[test]
    fn names_are_case_insensitive_with_aliases() {
        let c = NodeConfig::default();
        let resolve = |name: Option<&str>| c.cloud(name);
        for (given, canonical, suffix) in [
            (None, "AzurePublicCloud", "vault.azure.net"),
            (Some("azurecloud"), "AzurePublicCloud", "vault.azure.net"),
            (Some("AZURECHINACLOUD"), "AzureChinaCloud", "vault.azure.cn"),
            (
                Some("AzureUSGovernment"),
                "AzureUSGovernmentCloud",
                "vault.usgovcloudapi.net",
            ),
        ] {
            let cloud = resolve(given).unwrap();
            assert_eq!(cloud.name, canonical);
            assert_eq!(cloud.vault_dns_suffix, suffix);
            assert_eq!(cloud.vault_resource, format!("https://{suffix}"));
        }
        assert!(resolve(Some("Mars")).is_err());
        let retired = resolve(Some("azureGermanCloud")).unwrap_err();
        assert!(
            retired.message().contains("closed in October 2021"),
            "{retired}"
        );
        assert!(resolve(Some("AzureStackCloud")).is_err());
    }

    #[test]
    fn stack_cloud_comes_from_node_config() {
        let c = NodeConfig::parse(r#"{"cloud":"AzureStackCloud","customCloud":{"authorityHost":"https://login.local/","keyVaultDnsSuffix":"vault.local","keyVaultResource":"https://vault.local/"}}"#).unwrap();
        let cloud = c.cloud(None).unwrap();
        assert_eq!(cloud.authority_host, "https://login.local");
        assert_eq!(cloud.vault_url("kv1"), "https://kv1.vault.local/");
        assert_eq!(cloud.vault_resource, "https://vault.local");
    }
}
