//! Contracts: what is not metered. Format (JSON):
//!
//! ```json
//! { "accounts": [ { "account_id": "acme", "tariff_id": "hetzner-cloud", "credit": "5.00" } ] }
//! ```
//!
//! `credit` (optional, default 0) is offset against the invoice total (N6).

use std::collections::BTreeMap;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contracts {
    pub accounts: Vec<AccountContract>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountContract {
    pub account_id: String,
    pub tariff_id: String,
    #[serde(default, with = "tally_model::money::optional_string")]
    pub credit: Option<Decimal>,
}

/// Contracts by account id.
pub fn load_contracts(path: &Path) -> Result<BTreeMap<String, AccountContract>> {
    let error = |detail: String| Error::Contracts {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let contracts: Contracts = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
    let mut by_account = BTreeMap::new();
    for contract in contracts.accounts {
        if contract
            .credit
            .is_some_and(|credit| credit.is_sign_negative())
        {
            return Err(error(format!(
                "account '{}': credit must not be negative",
                contract.account_id
            )));
        }
        let account_id = contract.account_id.clone();
        if by_account.insert(account_id.clone(), contract).is_some() {
            return Err(error(format!("account '{account_id}' has two contracts")));
        }
    }
    Ok(by_account)
}
