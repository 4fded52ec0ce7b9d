//! Loading and checking tariff files. Errors name the file, the line and the field.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::NaiveDate;
use chrono_tz::Tz;
use rust_decimal::Decimal;
use tally_model::ResourceState;
use tally_model::tariff::{PricePer, SCHEMA_V1, StorageAccounting, Tariff, TimeQuantity};

use crate::error::{Error, Result};

/// Reads, parses and checks a tariff file (`tally tariff check FILE`).
pub fn check_tariff(path: &Path) -> Result<Tariff> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: format!("read tariff {}", path.display()),
        source,
    })?;
    parse_tariff(path, &text)
}

/// Parses and checks tariff text; `path` only names it in errors.
pub fn parse_tariff(path: &Path, text: &str) -> Result<Tariff> {
    let error = |detail: String| Error::Tariff {
        path: path.to_owned(),
        detail,
    };
    // toml's message names the line, the column and the field it could not accept.
    let tariff: Tariff =
        toml::from_str(text).map_err(|e| error(e.to_string().trim_end().to_owned()))?;
    check(&tariff, text).map_err(error)?;
    Ok(tariff)
}

/// The time zone a tariff bills its months in.
pub fn time_zone(tariff: &Tariff) -> Result<Tz, String> {
    tariff.time_zone.parse::<Tz>().map_err(|_| {
        format!(
            "time_zone '{}' is not an IANA time zone such as Europe/Berlin",
            tariff.time_zone
        )
    })
}

/// 1-based line of the first occurrence of `needle`, for pointing at a product.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map_or(0, |index| index + 1)
}

fn check(tariff: &Tariff, text: &str) -> Result<(), String> {
    if tariff.schema != SCHEMA_V1 {
        return Err(format!(
            "schema is '{}', this Tally reads '{SCHEMA_V1}'",
            tariff.schema
        ));
    }
    time_zone(tariff)?;
    if tariff.currency.len() != 3 || !tariff.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "currency '{}' is not an ISO 4217 code such as EUR",
            tariff.currency
        ));
    }
    if tariff.products.is_empty() {
        return Err("the tariff has no [[products]]".into());
    }
    let mut seen = BTreeSet::new();
    for product in &tariff.products {
        let line = line_of(text, &format!("sku = \"{}\"", product.sku));
        let at = |detail: String| {
            format!(
                "line {line}: product '{}' ({}): {detail}",
                product.sku, product.kind
            )
        };
        if !seen.insert((product.sku.clone(), product.kind)) {
            return Err(at("is listed twice".into()));
        }
        if product.time.is_empty() && product.traffic.is_none() && product.storage.is_none() {
            return Err(at("has no time, traffic or storage charge".into()));
        }
        for charge in &product.time {
            let at = |detail: String| at(format!("time charge '{}': {detail}", charge.name));
            non_negative("price", charge.price).map_err(at)?;
            let monthly = matches!(
                charge.quantity,
                TimeQuantity::MonthFraction | TimeQuantity::StartedMonths
            );
            if monthly != (charge.per == PricePer::Month) {
                return Err(at(format!(
                    "quantity {:?} needs per = \"{}\"",
                    charge.quantity,
                    if monthly { "month" } else { "hour" }
                )));
            }
            if charge.states.is_empty() {
                return Err(at("states is empty: nothing would ever be billed".into()));
            }
            for (state, factor) in &charge.states {
                non_negative(&format!("states.{state}"), factor.0).map_err(at)?;
            }
            // A started hour is charged at its most expensive state, found by the order
            // running > stopped > frozen: factors must follow that order.
            let ordered = [
                ResourceState::Running,
                ResourceState::Stopped,
                ResourceState::Frozen,
            ];
            if ordered.windows(2).any(|pair| {
                charge.factor(pair[0]) < charge.factor(pair[1])
                    && charge.states.contains_key(&pair[0])
            }) {
                return Err(at(
                    "state factors must not increase from running to stopped to frozen".into(),
                ));
            }
            for (gpus, price) in &charge.configuration_prices {
                if !charge.per_gpu || gpus.parse::<u16>().is_err() {
                    return Err(at(format!(
                        "configuration_prices key '{gpus}' needs per_gpu = true and a GPU count"
                    )));
                }
                non_negative("configuration price", price.0).map_err(at)?;
            }
            if !product.group_by.is_empty()
                && (charge.monthly_cap.is_some()
                    || charge.max_hours.is_some()
                    || charge.minimum_monthly.is_some())
            {
                return Err(at("monthly_cap, max_hours and minimum_monthly apply per resource and cannot be combined with group_by".into()));
            }
            for (name, value) in [
                ("monthly_cap", charge.monthly_cap),
                ("minimum_monthly", charge.minimum_monthly),
            ] {
                if let Some(value) = value {
                    non_negative(name, value).map_err(at)?;
                }
            }
        }
        if let Some(traffic) = &product.traffic {
            let at = |detail: String| at(format!("traffic: {detail}"));
            non_negative("included", traffic.included).map_err(at)?;
            non_negative("price", traffic.price).map_err(at)?;
            if traffic.prorate_over_hours == Some(0) {
                return Err(at("prorate_over_hours must be positive".into()));
            }
        }
        if let Some(storage) = &product.storage {
            let at = |detail: String| at(format!("storage: {detail}"));
            non_negative("price", storage.price).map_err(at)?;
            let needs_hours = storage.accounting == StorageAccounting::UnitHours;
            if needs_hours != storage.hours_per_month.is_some_and(|hours| hours > 0) {
                return Err(at("hours_per_month (positive) is required with accounting = \"unit_hours\" and only there".into()));
            }
        }
    }
    Ok(())
}

fn non_negative(field: &str, value: Decimal) -> Result<(), String> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{field} = {value} is negative"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn path() -> PathBuf {
        PathBuf::from("test.toml")
    }

    #[test]
    fn every_reference_tariff_checks() {
        for (name, text) in crate::reference_tariffs() {
            parse_tariff(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_misspelt_field_is_named_with_its_line() {
        let text = crate::reference_tariffs()[2]
            .1
            .replace("monthly_cap = \"3.79\"", "monthly_kap = \"3.79\"");
        let message = parse_tariff(&path(), &text)
            .expect_err("unknown field")
            .to_string();
        assert!(
            message.contains("monthly_kap") && message.contains("line"),
            "{message}"
        );
    }

    #[test]
    fn semantic_errors_name_the_product_and_line() {
        let text = crate::reference_tariffs()[2]
            .1
            .replace("price = \"0.0109\"", "price = \"-0.0109\"");
        let message = parse_tariff(&path(), &text)
            .expect_err("negative")
            .to_string();
        assert!(
            message.contains("cx32") && message.contains("negative") && message.contains("line "),
            "{message}"
        );
        let text = crate::reference_tariffs()[0]
            .1
            .replace("stopped = \"0.35\"", "stopped = \"1.35\"");
        let message = parse_tariff(&path(), &text)
            .expect_err("increasing")
            .to_string();
        assert!(message.contains("must not increase"), "{message}");
        let text = crate::reference_tariffs()[2]
            .1
            .replace("Europe/Berlin", "Mars/Olympus");
        assert!(
            parse_tariff(&path(), &text)
                .expect_err("zone")
                .to_string()
                .contains("Mars/Olympus")
        );
    }
}
