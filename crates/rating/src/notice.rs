//! Notices: what `tally watch` tells the provider, each exactly once.
//!
//! A notice's `id` says what happened to what and when (`budget_exhausted/lab/2026-10-03T14`):
//! the same facts always give the same id, whichever run finds them, so the id is both
//! the key of the emitted log and the idempotency key receivers deduplicate by.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The balance could not pay an hour's charge (T5, T7).
    BudgetExhausted,
    /// Funds returned and the unpaid hours within reach were charged (T5).
    BudgetRestored,
    /// A server must change state: budget exhausted (stop, freeze, terminate; T5), a
    /// trial account's server stopped too long, or any server stopped too long (T6).
    ServerStateChanged,
    /// A paying account's server has been stopped long enough to warn that it still
    /// costs money (T6, T7).
    StoppedServerCost,
    /// A share of a resource's included traffic is used (H4: 75 % and 100 %).
    TrafficIncludedUsed,
    /// The month's bill so far passed one of the account's thresholds (H10).
    CostThresholdExceeded,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BudgetExhausted => "budget_exhausted",
            Self::BudgetRestored => "budget_restored",
            Self::ServerStateChanged => "server_state_changed",
            Self::StoppedServerCost => "stopped_server_cost",
            Self::TrafficIncludedUsed => "traffic_included_used",
            Self::CostThresholdExceeded => "cost_threshold_exceeded",
        }
    }
}

/// One notice, as delivered (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Stable: the emitted log's key and the receivers' idempotency key.
    pub id: String,
    pub kind: NoticeKind,
    pub account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// When it happened (the end of the hour that made it so, or a top-up's time).
    pub at: DateTime<Utc>,
    /// The BILLING.md rule behind it.
    pub rule: String,
    /// For people.
    pub message: String,
    /// The figures behind it (amounts as decimal text, states, thresholds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl Notice {
    /// A notice whose id is `kind/account[/resource]/key`.
    pub fn new(
        kind: NoticeKind,
        account_id: &str,
        resource_id: Option<&str>,
        key: &str,
        at: DateTime<Utc>,
        rule: &str,
        message: String,
    ) -> Self {
        let id = match resource_id {
            Some(resource) => format!("{}/{account_id}/{resource}/{key}", kind.as_str()),
            None => format!("{}/{account_id}/{key}", kind.as_str()),
        };
        Self {
            id,
            kind,
            account_id: account_id.to_owned(),
            resource_id: resource_id.map(str::to_owned),
            at,
            rule: rule.to_owned(),
            message,
            details: BTreeMap::new(),
        }
    }

    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.details.insert(name.to_owned(), value.to_string());
        self
    }
}
