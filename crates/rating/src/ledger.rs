//! The prepaid ledger: one append-only NDJSON file for all prepaid accounts.
//!
//! ```json
//! {"id":"pay-1042","at":"2026-10-01T08:12:00Z","account_id":"lab","entry":"top_up","amount":"100.00"}
//! {"id":"lab/2026-10-01T08/charge","at":"2026-10-01T09:00:00Z","account_id":"lab","entry":"charge","hour":"2026-10-01T08","amount":"0.65","balance":"99.35"}
//! ```
//!
//! The provider's payment system appends `top_up`s (amount within the tariff's top-up
//! bounds, T5). Tally appends the rest as hours are settled (`tally watch --ledger`):
//! - `charge`: an hour's charge paid from the balance once the hour is over;
//! - `unpaid`: an hour's charge the balance could not pay;
//! - `retroactive_charge`: an unpaid hour paid when funds returned (T5: at most 12 h back);
//! - `write_off`: an unpaid hour beyond that reach, never charged;
//! - `adjustment`: late usage changed an hour already written; the difference, or the
//!   cancellation of an entry the replay no longer makes.
//!
//! Tally's entries are derived (from the rollups, the tariff and the top-ups): a run
//! appends only what the file does not hold yet, by id, so running twice writes nothing
//! twice. Nothing is ever rewritten: the file is the account's statement.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    TopUp,
    Charge,
    Unpaid,
    RetroactiveCharge,
    WriteOff,
    Adjustment,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TopUp => "top_up",
            Self::Charge => "charge",
            Self::Unpaid => "unpaid",
            Self::RetroactiveCharge => "retroactive_charge",
            Self::WriteOff => "write_off",
            Self::Adjustment => "adjustment",
        }
    }
}

/// One line of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// Unique in the file. Top-ups: the payment's id; Tally's entries:
    /// `account/hour/kind`.
    pub id: String,
    pub at: DateTime<Utc>,
    pub account_id: String,
    pub entry: EntryKind,
    #[serde(with = "tally_model::money::string")]
    pub amount: Decimal,
    /// The hour (`YYYY-MM-DDTHH`, UTC) a charge is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour: Option<String>,
    /// The balance after this entry.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "tally_model::money::optional_string"
    )]
    pub balance: Option<Decimal>,
}

/// A ledger file, read.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub entries: Vec<LedgerEntry>,
}

impl Ledger {
    /// Reads the file; a missing file is an empty ledger. Every bad line is an error that
    /// names the file and line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::Io {
                    action: format!("read the ledger {}", path.display()),
                    source,
                });
            }
        };
        // A last line without its newline is an append in progress (or cut short): it is
        // not read now, and nothing is appended after it (see `append`).
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        if complete < text.len() {
            tracing::warn!(
                path = %path.display(),
                line = text[..complete].lines().count() + 1,
                "the ledger's last line has no newline yet: not read this time"
            );
        }
        let mut entries = Vec::new();
        let mut ids = BTreeMap::new();
        for (index, line) in text[..complete].lines().enumerate() {
            let number = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |detail: String| Error::Ledger {
                path: path.to_owned(),
                line: number,
                detail,
            };
            let entry: LedgerEntry = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            if entry.entry == EntryKind::TopUp && entry.amount <= Decimal::ZERO {
                return Err(bad(format!(
                    "top-up '{}' of {} is not positive",
                    entry.id, entry.amount
                )));
            }
            if let Some(first) = ids.insert(entry.id.clone(), number) {
                return Err(bad(format!(
                    "id '{}' is already used on line {first}",
                    entry.id
                )));
            }
            entries.push(entry);
        }
        Ok(Self { entries })
    }

    /// The top-ups of one account, in time order.
    pub fn top_ups(&self, account_id: &str) -> Vec<&LedgerEntry> {
        let mut top_ups: Vec<&LedgerEntry> = self
            .entries
            .iter()
            .filter(|entry| entry.entry == EntryKind::TopUp && entry.account_id == account_id)
            .collect();
        top_ups.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        top_ups
    }

    /// The accounts with top-ups: the prepaid accounts.
    pub fn accounts(&self) -> Vec<String> {
        let mut accounts: Vec<String> = self
            .entries
            .iter()
            .filter(|entry| entry.entry == EntryKind::TopUp)
            .map(|entry| entry.account_id.clone())
            .collect();
        accounts.sort();
        accounts.dedup();
        accounts
    }

    /// Of `settled` (Tally's entries, as computed now), what the file lacks: new entries,
    /// an `adjustment` where the amounts under an id no longer add up to the computed one
    /// (late usage restated an hour already written), and an `adjustment` cancelling an
    /// entry written earlier that the computation no longer makes (late usage changed a
    /// paid hour into an unpaid one, say) — for the entries `covers` says were computed
    /// now (their account and hours were replayed). Summed by id, the file then holds
    /// exactly `settled`.
    pub fn missing(
        &self,
        settled: &[LedgerEntry],
        covers: impl Fn(&LedgerEntry) -> bool,
    ) -> Vec<LedgerEntry> {
        struct Written<'a> {
            amount: Decimal,
            adjustments: usize,
            first: &'a LedgerEntry,
        }
        let mut written: BTreeMap<&str, Written<'_>> = BTreeMap::new();
        for entry in self
            .entries
            .iter()
            .filter(|entry| entry.entry != EntryKind::TopUp)
        {
            let base = entry.id.split("/adjustment-").next().unwrap_or(&entry.id);
            let sum = written.entry(base).or_insert(Written {
                amount: Decimal::ZERO,
                adjustments: 0,
                first: entry,
            });
            sum.amount += entry.amount;
            if entry.entry == EntryKind::Adjustment {
                sum.adjustments += 1;
            }
        }
        let adjustment = |written: &Written<'_>, base: &str, amount: Decimal| LedgerEntry {
            id: format!("{base}/adjustment-{}", written.adjustments + 1),
            entry: EntryKind::Adjustment,
            amount,
            balance: None,
            ..written.first.clone()
        };
        let mut missing = Vec::new();
        for entry in settled {
            match written.remove(entry.id.as_str()) {
                None => missing.push(entry.clone()),
                Some(sum) if sum.amount == entry.amount => {}
                Some(sum) => missing.push(LedgerEntry {
                    at: entry.at,
                    ..adjustment(&sum, &entry.id, entry.amount - sum.amount)
                }),
            }
        }
        for (base, sum) in written {
            if !sum.amount.is_zero() && covers(sum.first) {
                missing.push(adjustment(&sum, base, -sum.amount));
            }
        }
        missing
    }

    /// Appends `entries` to the file with one write and an fsync.
    pub fn append(path: &Path, entries: &[LedgerEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let io = |source| Error::Io {
            action: format!("append to the ledger {}", path.display()),
            source,
        };
        let mut text = String::new();
        for entry in entries {
            text.push_str(&serde_json::to_string(entry).map_err(|e| Error::Ledger {
                path: path.to_owned(),
                line: 0,
                detail: e.to_string(),
            })?);
            text.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        // Appending after a line without its newline would merge two entries into one
        // unreadable line: that line must be finished (or removed) by whoever wrote it.
        let length = file.metadata().map_err(io)?.len();
        if length > 0 {
            let mut last = [0u8; 1];
            file.seek(std::io::SeekFrom::Start(length - 1))
                .map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                return Err(Error::Ledger {
                    path: path.to_owned(),
                    line: 0,
                    detail: "the last line has no newline (an append cut short or still being written): finish or remove it; nothing was appended".to_owned(),
                });
            }
        }
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_up(id: &str, amount: &str) -> String {
        format!(
            r#"{{"id":"{id}","at":"2026-10-01T08:00:00Z","account_id":"lab","entry":"top_up","amount":"{amount}"}}"#
        )
    }

    #[test]
    fn bad_lines_are_named_and_a_line_being_written_is_left_alone() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("ledger.ndjson");
        std::fs::write(
            &path,
            format!("{}\n{}\n", top_up("a", "10"), top_up("a", "20")),
        )
        .expect("write");
        let error = Ledger::load(&path).expect_err("duplicate id").to_string();
        assert!(
            error.contains("line 2: id 'a' is already used on line 1"),
            "{error}"
        );
        std::fs::write(&path, format!("{}\n{{\"id\":\n", top_up("a", "10"))).expect("write");
        let error = Ledger::load(&path).expect_err("bad json").to_string();
        assert!(error.contains("ledger.ndjson, line 2"), "{error}");
        std::fs::write(
            &path,
            format!("{}\n{}\n", top_up("a", "10"), top_up("b", "-1")),
        )
        .expect("write");
        assert!(Ledger::load(&path).is_err(), "a negative top-up");

        // Another process is mid-append: its line is not read, and Tally appends nothing
        // after it, rather than merge two entries into one line.
        let partial = &top_up("b", "30")[..20];
        std::fs::write(&path, format!("{}\n{partial}", top_up("a", "10"))).expect("write");
        let ledger = Ledger::load(&path).expect("load");
        assert_eq!(ledger.entries.len(), 1);
        let settled = LedgerEntry {
            id: "lab/2026-10-01T08/charge".to_owned(),
            at: "2026-10-01T09:00:00Z".parse().expect("time"),
            account_id: "lab".to_owned(),
            entry: EntryKind::Charge,
            amount: Decimal::ONE,
            hour: Some("2026-10-01T08".to_owned()),
            balance: None,
        };
        let error = Ledger::append(&path, std::slice::from_ref(&settled))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("no newline"), "{error}");
        // Once the line is finished, the append goes through after it.
        std::fs::write(
            &path,
            format!("{}\n{}\n", top_up("a", "10"), top_up("b", "30")),
        )
        .expect("write");
        Ledger::append(&path, std::slice::from_ref(&settled)).expect("append");
        let ledger = Ledger::load(&path).expect("load");
        assert_eq!(ledger.entries.len(), 3);
        assert!(ledger.missing(&[settled], |_| true).is_empty());
    }
}
