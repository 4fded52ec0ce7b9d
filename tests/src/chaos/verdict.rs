//! The end of every run: the sealed lake compared with the generator's truth minute by
//! minute and in every total, the dead letters counted by reason, and the invoices rated
//! from the lake compared with those rated from a lake built straight from the truth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use tally_collector::{Fleet, GroundTruth};
use tally_model::{Hour, Minute, Sample};

use super::pipeline::{DEAD_LETTER_TOPIC, Pipeline, RatingInputs};
use crate::read_dead_letters;

/// One scenario's line of figures.
#[derive(Debug)]
pub struct Figures {
    pub scenario: String,
    /// Distinct samples the fleet produced (the truth).
    pub samples: u64,
    /// What was injected, e.g. "20 SIGKILLs (9 at failpoints)".
    pub faults: String,
    /// Minutes of the truth missing from the lake.
    pub lost: u64,
    /// Minutes counted more than once in the lake.
    pub duplicated: u64,
    /// Minutes in the lake that no resource had.
    pub invented: u64,
    /// Distinct dead letters (by origin) by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Dead letters sent again by an aggregator that re-read their message after a
    /// restart (same origin): delivery to the dead-letter topic is at least once.
    pub dead_letters_resent: u64,
    /// Every rollup total equal to the truth's (bytes, sizes, minutes per state).
    pub totals_exact: bool,
    pub totals_detail: String,
    /// Invoices rated from the lake, each equal to the reference's: byte-identical, or
    /// for an issued month its subtotal plus its corrections' equal to the reference's.
    pub invoices: usize,
    pub invoices_differing: Vec<String>,
    pub invoice_check: InvoiceCheck,
    pub wall: Duration,
}

impl Figures {
    /// Whether the run kept every promise; `expected_dead_letters` are those the
    /// scenario injected on purpose (conflicts), by reason.
    pub fn failures(&self, expected_dead_letters: &BTreeMap<String, u64>) -> Vec<String> {
        let mut failures = Vec::new();
        for (what, count) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("invented", self.invented),
        ] {
            if count > 0 {
                failures.push(format!("{count} minutes {what}"));
            }
        }
        if !self.totals_exact {
            failures.push(format!("totals differ: {}", self.totals_detail));
        }
        if &self.dead_letters != expected_dead_letters {
            failures.push(format!(
                "dead letters {:?}, expected {expected_dead_letters:?}",
                self.dead_letters
            ));
        }
        if !self.invoices_differing.is_empty() {
            failures.push(format!(
                "invoices differ from the reference: {}",
                self.invoices_differing.join(", ")
            ));
        }
        failures
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dead_letters = if self.dead_letters.is_empty() {
            "0".to_owned()
        } else {
            let total: u64 = self.dead_letters.values().sum();
            let reasons: Vec<_> = self
                .dead_letters
                .iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect();
            format!(
                "{total} ({}; {} copies sent again on reading their messages again)",
                reasons.join(", "),
                self.dead_letters_resent
            )
        };
        write!(
            f,
            "{}: {} samples, faults: {}; lost {}, duplicated {}, invented {}, dead-lettered {}, \
             totals {}, {} invoices {} {}, {:.1} s",
            self.scenario,
            self.samples,
            self.faults,
            self.lost,
            self.duplicated,
            self.invented,
            dead_letters,
            if self.totals_exact { "exact" } else { "DIFFER" },
            self.invoices,
            match self.invoice_check {
                InvoiceCheck::Identical => "byte-identical",
                InvoiceCheck::IssuedPlusCorrections { .. } => "issued + corrections equal",
            },
            if self.invoices_differing.is_empty() {
                "to the reference"
            } else {
                "DIFFERING from the reference"
            },
            self.wall.as_secs_f64()
        )
    }
}

/// What reached the pipeline to be billed, as the truth knows it: fleets `tally simulate`
/// shipped whole, and the minutes collector agents sampled of their hosts' fleets.
pub struct Expected {
    parts: Vec<Part>,
}

enum Part {
    Shipped(Fleet),
    Sampled(Sampled),
    /// Samples the runner sent itself, to be billed.
    Sent(Vec<Sample>),
}

/// The minutes `first..=last` a collector agent sampled of its host's fleet (minutes as
/// the agent's clock tells them). Its counters prime at its first minute, which
/// therefore carries no traffic.
pub struct Sampled {
    pub fleet: Fleet,
    pub first: Minute,
    pub last: Minute,
}

impl Sampled {
    /// Its samples, an hour's worth of minutes at a time.
    pub fn chunks(&self) -> impl Iterator<Item = Vec<Sample>> + '_ {
        let (first, last) = (self.first.unix_minutes(), self.last.unix_minutes());
        (first..=last).step_by(60).map(move |start| {
            let mut samples = Vec::new();
            for minute in start..=(start + 59).min(last) {
                let minute = Minute::from_unix_minutes(minute);
                let taken = samples.len();
                self.fleet.samples_at(minute, &mut samples);
                if minute == self.first {
                    for sample in &mut samples[taken..] {
                        sample.out_external_bytes = 0;
                        sample.out_internal_bytes = 0;
                        sample.in_bytes = 0;
                    }
                }
            }
            samples
        })
    }
}

impl Expected {
    /// Everything `tally simulate` ships of `fleet`.
    pub fn shipped(fleet: Fleet) -> Self {
        Self {
            parts: vec![Part::Shipped(fleet)],
        }
    }

    /// What collector agents sampled.
    pub fn sampled(sampled: Vec<Sampled>) -> Self {
        Self {
            parts: sampled.into_iter().map(Part::Sampled).collect(),
        }
    }

    /// And `samples` the runner sent itself.
    pub fn and_sent(mut self, samples: Vec<Sample>) -> Self {
        self.parts.push(Part::Sent(samples));
        self
    }

    /// Every sample, in chunks of up to an hour of one part.
    pub fn chunks(&self) -> impl Iterator<Item = Vec<Sample>> + '_ {
        self.parts
            .iter()
            .flat_map(|part| -> Box<dyn Iterator<Item = Vec<Sample>> + '_> {
                match part {
                    Part::Shipped(fleet) => Box::new(fleet.chunks(60)),
                    Part::Sampled(sampled) => Box::new(sampled.chunks()),
                    Part::Sent(samples) => Box::new(std::iter::once(samples.clone())),
                }
            })
    }

    /// Every account of every part and the tariff it is billed on, sorted by account.
    pub fn contracts(&self) -> Vec<(String, &'static str)> {
        // Samples the runner sent are of accounts of the fleets.
        let accounts: BTreeMap<String, &'static str> = self
            .parts
            .iter()
            .flat_map(|part| match part {
                Part::Shipped(fleet) | Part::Sampled(Sampled { fleet, .. }) => fleet.contracts(),
                Part::Sent(_) => Vec::new(),
            })
            .collect();
        accounts.into_iter().collect()
    }

    /// The billing month (`YYYY-MM`) of the first minute.
    pub fn month(&self) -> String {
        let first = self
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Shipped(fleet) => Some(fleet.spec.start),
                Part::Sampled(sampled) => Some(sampled.first),
                Part::Sent(samples) => samples.iter().map(|sample| sample.minute).min(),
            })
            .min()
            .unwrap_or(Minute::from_unix_minutes(0));
        month_of(first)
    }
}

/// What reached the pipeline, minute by minute.
pub struct Truth {
    pub totals: GroundTruth,
    /// Per resource-hour, the minutes it existed (bit `m` = minute `m` of the hour).
    minutes: HashMap<(String, Hour), u64>,
    pub samples: u64,
}

impl Truth {
    pub fn of(expected: &Expected) -> Self {
        let mut totals = GroundTruth::default();
        let mut minutes: HashMap<(String, Hour), u64> = HashMap::new();
        let mut samples = 0;
        for chunk in expected.chunks() {
            for sample in &chunk {
                totals.record(sample);
                *minutes
                    .entry((sample.resource_id.clone(), sample.minute.hour()))
                    .or_default() |= 1 << sample.minute.minute_of_hour();
                samples += 1;
            }
        }
        Self {
            totals,
            minutes,
            samples,
        }
    }
}

/// Minutes lost, duplicated and invented: the lake's current rollup files (those rating
/// reads) against the truth.
fn compare_minutes(lake: &Path, truth: &Truth) -> anyhow::Result<(u64, u64, u64)> {
    let mut found: HashMap<(String, Hour), u64> = HashMap::new();
    let mut duplicated = 0u64;
    let rollups = lake.join(tally_aggregator::write::ROLLUPS_DIR);
    let directory = tally_rating::Lake::directory(lake);
    for hour_dir in std::fs::read_dir(&rollups)? {
        let key = format!(
            "{}/{}",
            tally_aggregator::write::ROLLUPS_DIR,
            hour_dir?.file_name().to_string_lossy()
        );
        let current = tally_rating::usage::current_generation(directory.list(&key)?);
        for file in current.files {
            for row in tally_aggregator::write::read_rows(&lake.join(file))? {
                let seen = found
                    .entry((row.key.resource_id.clone(), row.key.hour))
                    .or_default();
                for mask in row.meters.state_masks {
                    duplicated += u64::from((*seen & mask).count_ones());
                    *seen |= mask;
                }
            }
        }
    }
    let (mut lost, mut invented) = (0u64, 0u64);
    for (key, expected) in &truth.minutes {
        let seen = found.get(key).copied().unwrap_or_default();
        lost += u64::from((expected & !seen).count_ones());
    }
    for (key, seen) in &found {
        let expected = truth.minutes.get(key).copied().unwrap_or_default();
        invented += u64::from((seen & !expected).count_ones());
    }
    Ok((lost, duplicated, invented))
}

/// The truth's samples as NDJSON, rolled up by the aggregator's file backfill into a
/// reference lake: what the lake must equal had nothing gone wrong.
fn reference_lake(expected: &Expected, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let samples_path = dir.join("truth.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&samples_path)?);
    for chunk in expected.chunks() {
        file.write_all(&tally_model::wire::encode_json(&chunk))?;
    }
    file.flush()?;
    drop(file);
    let lake = dir.join("reference-lake");
    let config = tally_aggregator::AggregateConfig::new(&lake);
    let (_, dead_letters) = tally_aggregator::run_file(&config, &samples_path)?;
    anyhow::ensure!(
        dead_letters.is_empty(),
        "the truth itself has {} dead letters",
        dead_letters.len()
    );
    std::fs::remove_file(&samples_path)?;
    Ok(lake)
}

/// How the lake's invoices are held against the reference's.
#[derive(Clone, Debug)]
pub enum InvoiceCheck {
    /// The lake is rated now; every invoice must be byte-identical.
    Identical,
    /// The scenario issued the month (`tally rate --issue`) into `out` and rated it again
    /// after late usage: each account's issued subtotal plus its corrections' must equal
    /// the reference's subtotal exactly.
    IssuedPlusCorrections { out: PathBuf },
}

/// Each account's invoice in `dir`'s `invoices.jsonl` (not the correction rounds' below
/// it), as the bytes of its line: compared byte for byte.
fn invoices(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let path = dir.join(tally_rating::write::INVOICES_JSONL);
    let bytes = std::fs::read(&path)?;
    let lines = bytes
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty());
    let parsed = tally_rating::write::parse_invoices(&path.display().to_string(), &bytes)?;
    Ok(parsed
        .iter()
        .zip(lines)
        .map(|(invoice, line)| {
            let account = invoice["account_id"].as_str().unwrap_or_default();
            (account.to_owned(), line.to_vec())
        })
        .collect())
}

/// The `subtotal` of every invoice directly in `dir`, by account.
fn subtotals(dir: &Path) -> anyhow::Result<BTreeMap<String, Decimal>> {
    let mut subtotals = BTreeMap::new();
    for (account, invoice) in tally_rating::write::read_invoices(dir)? {
        let subtotal = invoice["subtotal"].as_str().ok_or_else(|| {
            anyhow::anyhow!(
                "the invoice of {account} in {} has no subtotal",
                dir.display()
            )
        })?;
        subtotals.insert(account, subtotal.parse()?);
    }
    Ok(subtotals)
}

/// The invoices of `expected` that `found` lacks or has otherwise (`equal` says), as
/// `describe` puts them, then those only `found` has.
fn differences<V>(
    found: &BTreeMap<String, V>,
    expected: &BTreeMap<String, V>,
    equal: impl Fn(&V, &V) -> bool,
    describe: impl Fn(&str, Option<&V>, &V) -> String,
) -> Vec<String> {
    let mut differing: Vec<String> = expected
        .iter()
        .filter(|(name, value)| !found.get(*name).is_some_and(|found| equal(found, value)))
        .map(|(name, value)| describe(name, found.get(name), value))
        .collect();
    differing.extend(
        found
            .keys()
            .filter(|name| !expected.contains_key(*name))
            .map(|name| format!("{name} (not in the reference)")),
    );
    differing
}

/// Invoices of `out`'s month that differ from (or are missing in) `reference`'s.
fn differing_invoices(
    out: &Path,
    reference: &Path,
    month: &str,
) -> anyhow::Result<(usize, Vec<String>)> {
    let found = invoices(&tally_rating::write::invoices_dir(out, month))?;
    let expected = invoices(&tally_rating::write::invoices_dir(reference, month))?;
    let differing = differences(&found, &expected, Vec::eq, |name, _, _| name.to_owned());
    Ok((expected.len(), differing))
}

/// The decimal places to which an issued subtotal plus its corrections must equal the
/// reference's: far below a cent, far above the last of Decimal's 28 digits.
const SUBTOTAL_PLACES: u32 = 20;

/// Accounts whose issued subtotal plus corrections (in `out`) differ from the reference's.
fn differing_after_corrections(
    out: &Path,
    reference: &Path,
    month: &str,
) -> anyhow::Result<(usize, Vec<String>)> {
    let issued_dir = tally_rating::write::invoices_dir(out, month);
    let mut found = subtotals(&issued_dir)?;
    for entry in std::fs::read_dir(&issued_dir)? {
        let path = entry?.path();
        if path.is_dir() {
            for (name, correction) in subtotals(&path)? {
                *found.entry(name).or_default() += correction;
            }
        }
    }
    let expected = subtotals(&tally_rating::write::invoices_dir(reference, month))?;
    // Decimal keeps 28 significant digits: a line that divides (a monthly price prorated
    // by hours) is exact to that, and a correction is a difference of two such lines.
    let equal = |found: &Decimal, expected: &Decimal| {
        found.round_dp(SUBTOTAL_PLACES) == expected.round_dp(SUBTOTAL_PLACES)
    };
    let differing = differences(&found, &expected, equal, |name, found, expected| {
        format!(
            "{name}: {} instead of {expected}",
            found.copied().unwrap_or_default()
        )
    });
    Ok((expected.len(), differing))
}

/// Checks the drained pipeline's lake, dead letters and invoices.
pub fn check(
    pipeline: &Pipeline,
    expected: &Expected,
    truth: &Truth,
    invoice_check: InvoiceCheck,
    scenario: String,
    faults: String,
    started: std::time::Instant,
) -> anyhow::Result<Figures> {
    let (lost, duplicated, invented) = compare_minutes(&pipeline.lake, truth)?;
    // Strict: every file in the lake counts, so a superseded generation left behind
    // would show here even though rating would skip it.
    let totals = tally_demo::check_against_truth(&pipeline.lake, &truth.totals);
    let (mut dead_letters, mut origins, mut dead_letters_resent) =
        (BTreeMap::new(), HashSet::new(), 0);
    for letter in read_dead_letters(&pipeline.clients, DEAD_LETTER_TOPIC)? {
        if origins.insert(letter.origin) {
            *dead_letters.entry(letter.reason).or_default() += 1;
        } else {
            dead_letters_resent += 1;
        }
    }

    let month = expected.month();
    let inputs = RatingInputs::write(&pipeline.dir, &expected.contracts())?;
    let reference = reference_lake(expected, &pipeline.dir)?;
    let reference_out = pipeline.dir.join("reference-rated");
    pipeline.rate(&reference, &month, &inputs, &reference_out, false)?;
    let (invoices, invoices_differing) = match &invoice_check {
        InvoiceCheck::Identical => {
            let out = pipeline.dir.join("rated");
            pipeline.rate(&pipeline.lake, &month, &inputs, &out, false)?;
            differing_invoices(&out, &reference_out, &month)?
        }
        InvoiceCheck::IssuedPlusCorrections { out } => {
            differing_after_corrections(out, &reference_out, &month)?
        }
    };

    Ok(Figures {
        scenario,
        samples: truth.samples,
        faults,
        lost,
        duplicated,
        invented,
        dead_letters,
        dead_letters_resent,
        totals_exact: totals.is_ok(),
        totals_detail: totals
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default(),
        invoices,
        invoices_differing,
        invoice_check,
        wall: started.elapsed(),
    })
}

/// The billing month (`YYYY-MM`) of `minute`.
pub fn month_of(minute: Minute) -> String {
    minute.to_datetime().format("%Y-%m").to_string()
}

/// A sample that says something else about its minute than `sample` did: another state
/// and other counters (a conflict whether or not its hour is still open).
pub fn conflicting(sample: &Sample) -> Sample {
    let mut other = sample.clone();
    other.state = match sample.state {
        tally_model::ResourceState::Running => tally_model::ResourceState::Stopped,
        _ => tally_model::ResourceState::Running,
    };
    other.in_bytes += 1;
    other
}
