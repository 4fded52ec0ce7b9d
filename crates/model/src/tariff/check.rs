//! Checking a tariff document beyond what its types say (`tally tariff check FILE`).
//!
//! Two passes: serde reads the TOML into [`Tariff`] (unknown fields, wrong types and
//! missing fields are refused there, and toml's message names the line, column and
//! field), then [`check`] looks at what the types cannot say: a real time zone, no
//! negative price, no product listed twice, units that fit the quantity... Every problem
//! found is reported, each with the line of the offending field, found through the
//! document's spans rather than by searching the text. Pure: reading files is the
//! caller's.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use chrono_tz::Tz;
use rust_decimal::Decimal;
use toml::de::{DeTable, DeValue};

use crate::tariff::{
    Interval, Prepaid, PricePer, Product, SCHEMA_V1, StorageAccounting, Tariff, TimeCharge,
    TimeQuantity,
};
use crate::{ResourceKind, ResourceState};

/// Parses and checks tariff text. The error lists every problem, one a line, each with
/// the line of the document it is on.
pub fn parse(text: &str) -> Result<Tariff, String> {
    // toml's message names the line, the column and the field it could not accept.
    let tariff: Tariff = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let problems = check(&tariff);
    if problems.is_empty() {
        return Ok(tariff);
    }
    let located: Vec<String> = problems
        .iter()
        .map(|problem| match line_of(text, &problem.field) {
            Some(line) => format!("line {line}: {}: {}", problem.field, problem.message),
            None => format!("{}: {}", problem.field, problem.message),
        })
        .collect();
    Err(located.join("\n"))
}

/// The time zone a tariff bills its months in.
pub fn time_zone(tariff: &Tariff) -> Result<Tz, String> {
    tariff.time_zone.parse::<Tz>().map_err(|_| {
        format!(
            "'{}' is not an IANA time zone such as Europe/Berlin",
            tariff.time_zone
        )
    })
}

/// The version of tariff `id` in force for a month starting on `first_day`: the one with
/// the latest `effective_from` on or before it.
pub fn version_for<'t>(
    tariffs: &'t [Tariff],
    id: &str,
    first_day: NaiveDate,
) -> Option<&'t Tariff> {
    tariffs
        .iter()
        .filter(|tariff| tariff.id == id && tariff.effective_from <= first_day)
        .max_by_key(|tariff| tariff.effective_from)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(&'static str),
    Index(usize),
}

/// A field of the document, e.g. `products[3].time[0].price`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Step>);

impl FieldPath {
    fn key(&self, key: &'static str) -> Self {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key));
        Self(steps)
    }

    fn index(&self, index: usize) -> Self {
        let mut steps = self.0.clone();
        steps.push(Step::Index(index));
        Self(steps)
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (position, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if position == 0 => write!(f, "{key}")?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// One thing wrong with a tariff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: FieldPath,
    pub message: String,
}

/// 1-based line of the deepest part of `field` present in the TOML `text`.
pub fn line_of(text: &str, field: &FieldPath) -> Option<usize> {
    let document = DeTable::parse(text).ok()?;
    let mut offset = document.span().start;
    let mut table = Some(document.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for step in &field.0 {
        let next = match (step, table, value) {
            (Step::Key(key), Some(table), _) => table.get(*key),
            (Step::Index(index), _, Some(DeValue::Array(items))) => items.get(*index),
            _ => None,
        };
        let Some(next) = next else {
            break;
        };
        offset = next.span().start;
        value = Some(next.get_ref());
        table = match next.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => None,
        };
    }
    Some(text.get(..offset)?.matches('\n').count() + 1)
}

/// The states a resource of `kind` reports (see `tally_model::sample::ResourceState`).
fn reported_states(kind: ResourceKind) -> &'static [ResourceState] {
    match kind {
        ResourceKind::Server | ResourceKind::GpuServer => &[
            ResourceState::Running,
            ResourceState::Stopped,
            ResourceState::Frozen,
        ],
        ResourceKind::Ip | ResourceKind::Snapshot | ResourceKind::Volume | ResourceKind::Addon => {
            &[ResourceState::Active]
        }
    }
}

/// Everything wrong with `tariff` that its types cannot express.
pub fn check(tariff: &Tariff) -> Vec<Problem> {
    let root = FieldPath::default();
    let mut problems = Vec::new();
    if tariff.schema != SCHEMA_V1 {
        problems.push(Problem::new(
            root.key("schema"),
            format!("is '{}', but this Tally reads '{SCHEMA_V1}'", tariff.schema),
        ));
    }
    for (field, value) in [("id", &tariff.id), ("version", &tariff.version)] {
        if value.trim().is_empty() {
            problems.push(Problem::new(
                root.key(field),
                "must not be empty".to_owned(),
            ));
        }
    }
    if let Err(message) = time_zone(tariff) {
        problems.push(Problem::new(root.key("time_zone"), message));
    }
    if tariff.currency.len() != 3 || !tariff.currency.chars().all(|c| c.is_ascii_uppercase()) {
        problems.push(Problem::new(
            root.key("currency"),
            format!("'{}' is not an ISO 4217 code such as EUR", tariff.currency),
        ));
    }
    if tariff.invoice.decimal_places > 10 {
        problems.push(Problem::new(
            root.key("invoice").key("decimal_places"),
            format!("{} is more than 10", tariff.invoice.decimal_places),
        ));
    }
    if tariff.products.is_empty() {
        problems.push(Problem::new(
            root.key("products"),
            "the tariff has no [[products]]".to_owned(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (index, product) in tariff.products.iter().enumerate() {
        let at = root.key("products").index(index);
        if !seen.insert((product.sku.as_str(), product.kind)) {
            problems.push(Problem::new(
                at.key("sku"),
                format!(
                    "product '{}' ({}) is listed twice",
                    product.sku, product.kind
                ),
            ));
        }
        problems.extend(check_product(product, &at));
    }
    let mut skus = BTreeSet::new();
    for (index, subscription) in tariff.subscriptions.iter().enumerate() {
        let at = root.key("subscriptions").index(index);
        if !skus.insert(subscription.sku.as_str()) {
            problems.push(Problem::new(
                at.key("sku"),
                format!("subscription '{}' is listed twice", subscription.sku),
            ));
        }
        if subscription.price.is_sign_negative() && !subscription.price.is_zero() {
            problems.push(Problem::new(
                at.key("price"),
                format!("{} is negative", subscription.price),
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (index, reservation) in tariff.reservations.iter().enumerate() {
        let at = root.key("reservations").index(index);
        if !names.insert(reservation.name.as_str()) {
            problems.push(Problem::new(
                at.key("name"),
                format!("reservation '{}' is listed twice", reservation.name),
            ));
        }
        if reservation.price.is_sign_negative() && !reservation.price.is_zero() {
            problems.push(Problem::new(
                at.key("price"),
                format!("{} is negative", reservation.price),
            ));
        }
        if reservation.terms_months.is_empty() || reservation.terms_months.contains(&0) {
            problems.push(Problem::new(
                at.key("terms_months"),
                "must list the terms on offer, each at least 1 month".to_owned(),
            ));
        }
        if let Err(message) = coverable(
            tariff,
            &reservation.sku,
            reservation.kind,
            &reservation.covers,
        ) {
            problems.push(Problem::new(
                at.key("covers"),
                format!("reservation '{}': {message}", reservation.name),
            ));
        }
    }
    if let Some(prepaid) = &tariff.prepaid {
        problems.extend(check_prepaid(tariff, prepaid, &root.key("prepaid")));
    }
    problems
}

/// The budget rules must be orderable in time and name templates the tariff sells.
fn check_prepaid(tariff: &Tariff, prepaid: &Prepaid, at: &FieldPath) -> Vec<Problem> {
    let mut problems = Vec::new();
    if prepaid.top_up_min <= Decimal::ZERO || prepaid.top_up_max < prepaid.top_up_min {
        problems.push(Problem::new(
            at.key("top_up_max"),
            format!(
                "top-ups from {} to {}: need 0 < top_up_min ≤ top_up_max",
                prepaid.top_up_min, prepaid.top_up_max
            ),
        ));
    }
    if prepaid.terminate_after_hours < prepaid.freeze_after_hours {
        problems.push(Problem::new(
            at.key("terminate_after_hours"),
            format!(
                "{} h is before the freeze at {} h: servers are frozen before they are terminated",
                prepaid.terminate_after_hours, prepaid.freeze_after_hours
            ),
        ));
    }
    for (index, minimum) in prepaid.minimum_start.iter().enumerate() {
        let sold = [ResourceKind::GpuServer, ResourceKind::Server]
            .into_iter()
            .filter_map(|kind| tariff.product(&minimum.sku, kind))
            .any(|product| {
                product.time.iter().any(|charge| {
                    charge.interval == Interval::Hourly && charge.per == PricePer::Hour
                })
            });
        if !sold {
            problems.push(Problem::new(
                at.key("minimum_start").index(index).key("sku"),
                format!(
                    "'{}' is not a server template with an hourly price in this tariff",
                    minimum.sku
                ),
            ));
        }
    }
    problems
}

/// Whether a contingent (reservation, commitment) can cover the time charge `covers` of
/// product (`sku`, `kind`): its hours must add up across resources, so that hours taken
/// off one line are hours of usage, whatever resource they came from.
pub fn coverable(
    tariff: &Tariff,
    sku: &str,
    kind: ResourceKind,
    covers: &str,
) -> Result<(), String> {
    let product = tariff
        .product(sku, kind)
        .ok_or_else(|| format!("the tariff sells no product '{sku}' ({kind})"))?;
    let charge = product
        .time
        .iter()
        .find(|charge| charge.name == covers)
        .ok_or_else(|| format!("product '{sku}' has no time charge named '{covers}'"))?;
    let additive = charge.per == PricePer::Hour
        && charge.interval == Interval::Hourly
        && matches!(
            charge.quantity,
            TimeQuantity::Minutes | TimeQuantity::StartedHours
        )
        && charge.monthly_cap.is_none()
        && charge.max_hours.is_none()
        && charge.minimum_monthly.is_none();
    if !additive {
        return Err(format!(
            "time charge '{covers}' of '{sku}' does not bill hours that add up (it needs per = \"hour\", quantity minutes or started_hours, no cap, hour limit or minimum)"
        ));
    }
    Ok(())
}

fn per_word(per: PricePer) -> &'static str {
    match per {
        PricePer::Hour => "hour",
        PricePer::Day => "day",
        PricePer::Week => "week",
        PricePer::Month => "month",
        PricePer::Year => "year",
    }
}

impl Problem {
    fn new(field: FieldPath, message: String) -> Self {
        Self { field, message }
    }
}

fn check_product(product: &Product, at: &FieldPath) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |field: FieldPath, message: String| {
        problems.push(Problem {
            field,
            message: format!("product '{}' ({}): {message}", product.sku, product.kind),
        });
    };
    if product.sku.trim().is_empty() {
        problem(at.key("sku"), "must not be empty".to_owned());
    }
    if product.time.is_empty() && product.traffic.is_none() && product.storage.is_none() {
        problem(
            at.key("sku"),
            "has no time, traffic or storage charge: nothing would be billed; give it a charge (a zero price for a free product)"
                .to_owned(),
        );
    }
    let mut names = BTreeSet::new();
    for (index, charge) in product.time.iter().enumerate() {
        let at = at.key("time").index(index);
        if !names.insert(charge.name.as_str()) {
            problem(
                at.key("name"),
                format!("time charge name '{}' is used twice", charge.name),
            );
        }
        for (field, message) in check_time_charge(product, charge) {
            problem(
                at.key(field),
                format!("time charge '{}': {message}", charge.name),
            );
        }
    }
    for (index, surcharge) in product.surcharges.iter().enumerate() {
        let at = at.key("surcharges").index(index);
        if !names.insert(surcharge.name.as_str()) {
            problem(
                at.key("name"),
                format!("charge name '{}' is used twice", surcharge.name),
            );
        }
        if !product
            .time
            .iter()
            .any(|charge| charge.name == surcharge.of)
        {
            problem(
                at.key("of"),
                format!(
                    "surcharge '{}' is a share of '{}', which is not a time charge of this product",
                    surcharge.name, surcharge.of
                ),
            );
        }
        if !product.group_by.is_empty() {
            problem(
                at.key("of"),
                "surcharges are a share of one resource's charge and cannot be combined with group_by".to_owned(),
            );
        }
        if surcharge.factor.0.is_sign_negative() && !surcharge.factor.0.is_zero() {
            problem(
                at.key("factor"),
                format!("{} is negative", surcharge.factor.0),
            );
        }
    }
    if let Some(traffic) = &product.traffic {
        let at = at.key("traffic");
        let prices = traffic.tiers.iter().map(|tier| tier.price);
        for (field, value) in std::iter::once(("included", traffic.included))
            .chain(traffic.price.map(|price| ("price", price)))
            .chain(prices.map(|price| ("tiers", price)))
        {
            if value.is_sign_negative() && !value.is_zero() {
                problem(at.key(field), format!("{value} is negative"));
            }
        }
        match (traffic.price.is_some(), traffic.tiers.is_empty()) {
            (true, false) => problem(
                at.key("tiers"),
                "give either price or tiers, not both".to_owned(),
            ),
            (false, true) => problem(
                at.key("price"),
                "is missing: give a price per unit, or tiers".to_owned(),
            ),
            _ => {}
        }
        let bounds: Vec<Option<Decimal>> = traffic.tiers.iter().map(|tier| tier.up_to).collect();
        let last_open = bounds.last().is_some_and(Option::is_none);
        let inner_rising = bounds[..bounds.len().saturating_sub(1)]
            .iter()
            .try_fold(Decimal::ZERO, |previous, bound| match bound {
                Some(bound) if *bound > previous => Some(*bound),
                _ => None,
            })
            .is_some();
        let well_formed = last_open && inner_rising;
        if !traffic.tiers.is_empty() && !well_formed {
            problem(
                at.key("tiers"),
                "bands need rising positive up_to bounds and a last band without up_to".to_owned(),
            );
        }
        if traffic.counters.is_empty() {
            problem(
                at.key("counters"),
                "is empty: name the meters charged, e.g. [\"out_external\"]".to_owned(),
            );
        }
        if traffic.counters.iter().collect::<BTreeSet<_>>().len() != traffic.counters.len() {
            problem(
                at.key("counters"),
                "names a meter twice: it would be counted twice".to_owned(),
            );
        }
        if traffic.prorate_over_hours == Some(0) {
            problem(at.key("prorate_over_hours"), "must be positive".to_owned());
        }
    }
    if let Some(storage) = &product.storage {
        let at = at.key("storage");
        for (field, value) in [
            ("price", Some(storage.price)),
            ("minimum_monthly", storage.minimum_monthly),
        ] {
            if let Some(value) = value
                && value.is_sign_negative()
                && !value.is_zero()
            {
                problem(at.key(field), format!("{value} is negative"));
            }
        }
        match (storage.accounting, storage.hours_per_month) {
            (StorageAccounting::UnitHours, None | Some(0)) => problem(
                at.key("hours_per_month"),
                "accounting = \"unit_hours\" needs hours_per_month (positive), the hours a month's price is divided by".to_owned(),
            ),
            (StorageAccounting::MonthFraction, Some(_)) => problem(
                at.key("hours_per_month"),
                "only applies to accounting = \"unit_hours\"; month_fraction divides by the hours of the calendar month".to_owned(),
            ),
            _ => {}
        }
    }
    problems
}

/// The problems of one time charge, by the field they are about.
fn check_time_charge(product: &Product, charge: &TimeCharge) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let negative = |value: Decimal| value.is_sign_negative() && !value.is_zero();
    for (field, value) in [
        ("price", Some(charge.price)),
        ("monthly_cap", charge.monthly_cap),
        ("minimum_monthly", charge.minimum_monthly),
    ] {
        if let Some(value) = value
            && negative(value)
        {
            problems.push((field, format!("{value} is negative")));
        }
    }
    if charge.quantity == TimeQuantity::StartedPeriods {
        // The period is the contract's interval: its unit is what the price is per.
        match charge.interval.period() {
            None => problems.push((
                "interval",
                "quantity started_periods is for daily, weekly, monthly or yearly contracts; hourly charges count hours".to_owned(),
            )),
            Some(unit) if unit != charge.per => problems.push((
                "per",
                format!(
                    "a {} interval's periods are priced per {}",
                    charge.interval.as_str(),
                    per_word(unit)
                ),
            )),
            Some(_) => {}
        }
    } else if charge.interval != Interval::Hourly {
        problems.push((
            "quantity",
            format!(
                "a {} charge is paid per started period: it needs quantity = \"started_periods\"",
                charge.interval.as_str()
            ),
        ));
    } else if matches!(charge.per, PricePer::Day | PricePer::Week | PricePer::Year) {
        problems.push((
            "per",
            "day, week and year prices need quantity = \"started_periods\"".to_owned(),
        ));
    }
    let monthly = matches!(
        charge.quantity,
        TimeQuantity::MonthFraction | TimeQuantity::StartedMonths
    );
    if charge.quantity != TimeQuantity::StartedPeriods && monthly != (charge.per == PricePer::Month)
    {
        problems.push((
            "per",
            format!(
                "quantity {:?} counts {}, so it needs per = \"{}\"",
                charge.quantity,
                if monthly { "months" } else { "hours" },
                if monthly { "month" } else { "hour" }
            ),
        ));
    }
    if charge.max_hours.is_some()
        && !matches!(
            charge.quantity,
            TimeQuantity::StartedHours | TimeQuantity::CeilTotalHours
        )
    {
        problems.push((
            "max_hours",
            "only applies to quantity started_hours or ceil_total_hours".to_owned(),
        ));
    }
    if charge.states.is_empty() {
        problems.push((
            "states",
            "is empty: nothing would ever be billed".to_owned(),
        ));
    }
    for (state, factor) in &charge.states {
        if negative(factor.0) {
            problems.push(("states", format!("{state} = {} is negative", factor.0)));
        }
    }
    let reported = reported_states(product.kind);
    if !charge.states.is_empty() && !charge.states.keys().any(|state| reported.contains(state)) {
        problems.push((
            "states",
            format!(
                "a {} reports only {:?}, none of which is listed: nothing would ever be billed",
                product.kind,
                reported
                    .iter()
                    .map(|state| state.as_str())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    for (gpus, price) in &charge.configuration_prices {
        if !charge.per_gpu {
            problems.push(("configuration_prices", "needs per_gpu = true".to_owned()));
        }
        if gpus.parse::<u16>().map_or(true, |count| count == 0) {
            problems.push((
                "configuration_prices",
                format!("key '{gpus}' is not a GPU count (1 to 65535)"),
            ));
        }
        if negative(price.0) {
            problems.push((
                "configuration_prices",
                format!("{gpus} GPUs = {} is negative", price.0),
            ));
        }
    }
    // Caps, hour limits and minimums are per resource and month: they need exactly one
    // line per resource, which grouping and GPU configurations would break.
    let per_resource_limits = charge.monthly_cap.is_some()
        || charge.max_hours.is_some()
        || charge.minimum_monthly.is_some();
    if per_resource_limits && (!product.group_by.is_empty() || charge.per_gpu) {
        problems.push((
            "monthly_cap",
            "monthly_cap, max_hours and minimum_monthly apply per resource and cannot be combined with group_by or per_gpu".to_owned(),
        ));
    }
    problems
}
