//! Who sent a batch: each host signs every Kafka message's payload with its own ed25519
//! key (headers `tally-host` and `tally-signature`), and the aggregator checks it against a
//! keyring of the hosts' public keys, so one compromised host cannot report usage as another
//! host, nor, with an inventory, for resources it does not run.
//!
//! Keyring (TOML):
//!
//! ```toml
//! [[hosts]]
//! host = "hv-fra-017"
//! public_key = "3b6a27bc…"          # 64 hex digits, from `tally keygen`
//! # Optional inventory: what this host may report. Absent: any account and resource.
//! accounts = ["acme", "lab"]
//! resource_prefixes = ["fra-017-"]
//! ```
//!
//! A host's private key is a file holding its 32-byte seed as 64 hex digits.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;

use crate::sample::Sample;
use crate::validate::{RejectReason, Rejection};

/// The header naming the signing host.
pub const HOST_HEADER: &str = "tally-host";
/// The header holding the 64-byte ed25519 signature over the payload.
pub const SIGNATURE_HEADER: &str = "tally-signature";

/// A host's signing key.
pub struct HostKey {
    host: String,
    key: SigningKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(formatter, "HostKey({}, {})", self.host, self.public_hex())
    }
}

impl HostKey {
    /// The key of `host` from its seed as 64 hex digits (surrounding whitespace allowed).
    pub fn from_seed_hex(host: &str, text: &str) -> Result<Self, String> {
        let seed: [u8; 32] = from_hex(text.trim())?
            .try_into()
            .map_err(|bytes: Vec<u8>| format!("a key seed is 32 bytes, not {}", bytes.len()))?;
        Ok(Self::from_seed(host, seed))
    }

    pub fn from_seed(host: &str, seed: [u8; 32]) -> Self {
        Self {
            host: host.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The public key as 64 hex digits, for the keyring.
    pub fn public_hex(&self) -> String {
        to_hex(self.key.verifying_key().as_bytes())
    }

    /// The seed as 64 hex digits, for the host's key file.
    pub fn seed_hex(&self) -> String {
        to_hex(self.key.as_bytes())
    }

    pub fn sign(&self, payload: &[u8]) -> [u8; 64] {
        self.key.sign(payload).to_bytes()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    hosts: Vec<KeyringEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringEntry {
    host: String,
    public_key: String,
    #[serde(default)]
    accounts: Option<BTreeSet<String>>,
    #[serde(default)]
    resource_prefixes: Vec<String>,
}

/// One host of the keyring.
#[derive(Debug)]
struct KnownHost {
    key: VerifyingKey,
    /// `None`: any account.
    accounts: Option<BTreeSet<String>>,
    /// Empty: any resource.
    resource_prefixes: Vec<String>,
}

/// The hosts allowed to send samples, by name.
#[derive(Debug, Default)]
pub struct Keyring {
    hosts: BTreeMap<String, KnownHost>,
}

impl Keyring {
    /// Reads a keyring document; errors name the host entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeyringFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut hosts = BTreeMap::new();
        for entry in file.hosts {
            let bad = |detail: String| format!("host '{}': {detail}", entry.host);
            let bytes: [u8; 32] = from_hex(entry.public_key.trim())
                .map_err(&bad)?
                .try_into()
                .map_err(|_| bad("a public key is 32 bytes (64 hex digits)".to_owned()))?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
            let known = KnownHost {
                key,
                accounts: entry.accounts,
                resource_prefixes: entry.resource_prefixes,
            };
            if hosts.insert(entry.host.clone(), known).is_some() {
                return Err(format!("host '{}' is listed twice", entry.host));
            }
        }
        Ok(Self { hosts })
    }

    /// The host that signed `payload`, or why the message is not trusted.
    pub fn verify<'k>(
        &'k self,
        host: Option<&[u8]>,
        signature: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<&'k str, Rejection> {
        let (Some(host), Some(signature)) = (host, signature) else {
            return Err(Rejection::new(
                RejectReason::Unsigned,
                format!("the message has no {HOST_HEADER} and {SIGNATURE_HEADER} headers"),
            ));
        };
        let name = String::from_utf8_lossy(host);
        let Some((name, known)) = self.hosts.get_key_value(name.as_ref()) else {
            return Err(Rejection::new(
                RejectReason::BadSignature,
                format!("host '{name}' is not in the keyring"),
            ));
        };
        let signature = Signature::from_slice(signature).map_err(|_| {
            Rejection::new(
                RejectReason::BadSignature,
                format!("host '{name}': the signature is not 64 bytes"),
            )
        })?;
        known.key.verify(payload, &signature).map_err(|_| {
            Rejection::new(
                RejectReason::BadSignature,
                format!("host '{name}': the signature does not match the message"),
            )
        })?;
        Ok(name)
    }

    /// Whether `host` (which signed the sample's message) may report `sample`.
    pub fn admits(&self, host: &str, sample: &Sample) -> Result<(), Rejection> {
        let refuse = |detail: String| Err(Rejection::new(RejectReason::NotPermitted, detail));
        if sample.host != host {
            return refuse(format!(
                "signed by host '{host}' but names host '{}'",
                sample.host
            ));
        }
        let Some(known) = self.hosts.get(host) else {
            return refuse(format!("host '{host}' is not in the keyring"));
        };
        if let Some(accounts) = &known.accounts
            && !accounts.contains(&sample.account_id)
        {
            return refuse(format!(
                "host '{host}' may not report account '{}'",
                sample.account_id
            ));
        }
        if !known.resource_prefixes.is_empty()
            && !known
                .resource_prefixes
                .iter()
                .any(|prefix| sample.resource_id.starts_with(prefix.as_str()))
        {
            return refuse(format!(
                "host '{host}' may not report resource '{}'",
                sample.resource_id
            ));
        }
        Ok(())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("hex text has an odd number of digits".to_owned());
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            text.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("'{text}' is not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(host: &str, account: &str, resource: &str) -> Sample {
        Sample {
            minute: "2026-10-01T10:00:00Z".parse().expect("minute"),
            host: host.to_owned(),
            account_id: account.to_owned(),
            resource_id: resource.to_owned(),
            kind: crate::ResourceKind::Server,
            sku: "cx22".into(),
            zone: "fsn1".into(),
            state: crate::ResourceState::Running,
            gpus: 0,
            out_external_bytes: 0,
            out_internal_bytes: 0,
            in_bytes: 0,
            size_bytes: 0,
            labels: Default::default(),
        }
    }

    #[test]
    fn only_a_listed_host_signing_its_own_samples_is_trusted() {
        let good = HostKey::from_seed("hv-1", [7; 32]);
        let other = HostKey::from_seed("hv-2", [9; 32]);
        let keyring = Keyring::parse(&format!(
            "[[hosts]]\nhost = \"hv-1\"\npublic_key = \"{}\"\naccounts = [\"acme\"]\nresource_prefixes = [\"hv-1-\"]\n\
             [[hosts]]\nhost = \"hv-2\"\npublic_key = \"{}\"\n",
            good.public_hex(),
            other.public_hex()
        ))
        .expect("keyring");
        let payload = b"a batch";
        let signature = good.sign(payload);
        assert_eq!(
            keyring.verify(Some(b"hv-1"), Some(&signature), payload),
            Ok("hv-1")
        );
        let reason = |result: Result<&str, Rejection>| result.map(|_| ()).map_err(|r| r.reason);
        assert_eq!(
            reason(keyring.verify(None, None, payload)),
            Err(RejectReason::Unsigned)
        );
        // Another host's key, a changed payload, an unknown host: all refused.
        assert_eq!(
            reason(keyring.verify(Some(b"hv-1"), Some(&other.sign(payload)), payload)),
            Err(RejectReason::BadSignature)
        );
        assert_eq!(
            reason(keyring.verify(Some(b"hv-1"), Some(&signature), b"a batcH")),
            Err(RejectReason::BadSignature)
        );
        assert_eq!(
            reason(keyring.verify(Some(b"hv-9"), Some(&signature), payload)),
            Err(RejectReason::BadSignature)
        );
        assert_eq!(
            reason(keyring.verify(Some(b"hv-1"), Some(&signature[..10]), payload)),
            Err(RejectReason::BadSignature)
        );
        // The inventory: its own name, its accounts, its resources.
        assert!(
            keyring
                .admits("hv-1", &sample("hv-1", "acme", "hv-1-vm"))
                .is_ok()
        );
        for (host, account, resource) in [
            ("hv-2", "acme", "hv-1-vm"),
            ("hv-1", "other", "hv-1-vm"),
            ("hv-1", "acme", "hv-2-vm"),
        ] {
            let rejection = keyring
                .admits("hv-1", &sample(host, account, resource))
                .expect_err("not permitted");
            assert_eq!(
                rejection.reason,
                RejectReason::NotPermitted,
                "{}",
                rejection.detail
            );
        }
        // Without an inventory, any account and resource of its own.
        assert!(keyring.admits("hv-2", &sample("hv-2", "x", "y")).is_ok());
    }

    #[test]
    fn keys_round_trip_through_hex_and_bad_keyrings_are_named() {
        let key = HostKey::from_seed("hv-1", [3; 32]);
        let again =
            HostKey::from_seed_hex("hv-1", &format!(" {}\n", key.seed_hex())).expect("seed");
        assert_eq!(again.public_hex(), key.public_hex());
        assert!(HostKey::from_seed_hex("hv-1", "abc").is_err());
        let error = Keyring::parse("[[hosts]]\nhost = \"hv-1\"\npublic_key = \"00\"\n")
            .expect_err("short key");
        assert!(error.contains("host 'hv-1'"), "{error}");
        assert!(
            !format!("{key:?}").contains(&key.seed_hex()),
            "the secret never printed"
        );
    }
}
