//! Line item v1 (`schemas/line_item.v1.json`): one invoice line, FOCUS-aligned.
//!
//! Column names follow the FinOps FOCUS specification (`BillingAccountId`, `BilledCost`,
//! ...); what FOCUS has no column for carries an `x_` prefix: the rule that produced the
//! line, the tariff and its version, and the lineage (the rollup rows behind it).
//! Money and quantities are `Decimal128(38, 20)`: full precision for every line, rounding
//! happens only on the invoice.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Decimal128Array, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Decimal places stored for money and quantities.
pub const DECIMAL_SCALE: i8 = 20;
/// Digits stored for money and quantities (Arrow's Decimal128 maximum).
pub const DECIMAL_PRECISION: u8 = 38;

/// FOCUS ChargeCategory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChargeCategory {
    Usage,
    Purchase,
    Credit,
    Adjustment,
}

/// FOCUS ChargeFrequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChargeFrequency {
    #[serde(rename = "Usage-Based")]
    UsageBased,
    Recurring,
    #[serde(rename = "One-Time")]
    OneTime,
}

/// One invoice line at full precision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub billing_account_id: String,
    pub billing_period_start: DateTime<Utc>,
    pub billing_period_end: DateTime<Utc>,
    pub charge_period_start: DateTime<Utc>,
    pub charge_period_end: DateTime<Utc>,
    pub charge_category: ChargeCategory,
    /// FOCUS ChargeClass: `Some("Correction")` for a line that corrects an issued invoice.
    pub charge_class: Option<String>,
    pub charge_frequency: ChargeFrequency,
    pub charge_description: String,
    pub resource_id: Option<String>,
    pub resource_type: Option<String>,
    pub sku_id: String,
    pub region_id: Option<String>,
    pub consumed_quantity: Decimal,
    pub consumed_unit: String,
    pub pricing_quantity: Decimal,
    pub pricing_unit: String,
    pub list_unit_price: Decimal,
    pub billed_cost: Decimal,
    pub billing_currency: String,
    pub provider_name: String,
    /// The billing rule that produced the line, e.g. `H1 cap applied`.
    pub x_rule: String,
    pub x_tariff_id: String,
    pub x_tariff_version: String,
    /// The usage behind the line: which rollup rows (hours, count) it was computed from.
    pub x_lineage: String,
}

impl ChargeCategory {
    pub const fn as_str(self) -> &'static str {
        match self {
            ChargeCategory::Usage => "Usage",
            ChargeCategory::Purchase => "Purchase",
            ChargeCategory::Credit => "Credit",
            ChargeCategory::Adjustment => "Adjustment",
        }
    }
}

impl ChargeFrequency {
    pub const fn as_str(self) -> &'static str {
        match self {
            ChargeFrequency::UsageBased => "Usage-Based",
            ChargeFrequency::Recurring => "Recurring",
            ChargeFrequency::OneTime => "One-Time",
        }
    }
}

static LINE_ITEM_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let time = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let decimal = |name: &str| {
        Field::new(
            name,
            DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        text("BillingAccountId", false),
        time("BillingPeriodStart"),
        time("BillingPeriodEnd"),
        time("ChargePeriodStart"),
        time("ChargePeriodEnd"),
        text("ChargeCategory", false),
        text("ChargeClass", true),
        text("ChargeFrequency", false),
        text("ChargeDescription", false),
        text("ResourceId", true),
        text("ResourceType", true),
        text("SkuId", false),
        text("RegionId", true),
        decimal("ConsumedQuantity"),
        text("ConsumedUnit", false),
        decimal("PricingQuantity"),
        text("PricingUnit", false),
        decimal("ListUnitPrice"),
        decimal("BilledCost"),
        text("BillingCurrency", false),
        text("ProviderName", false),
        text("x_rule", false),
        text("x_tariff_id", false),
        text("x_tariff_version", false),
        text("x_lineage", false),
    ]))
});

/// The Arrow schema of line item v1 files.
pub fn line_item_arrow_schema() -> SchemaRef {
    LINE_ITEM_SCHEMA.clone()
}

/// A decimal as the `Decimal128(38, 20)` integer Arrow stores; an error if it does not fit.
/// Digits beyond the 20th decimal place (only a division such as price / 672 makes them)
/// are rounded half-up.
pub fn decimal_to_i128(value: Decimal) -> Result<i128, ArrowError> {
    let scale = DECIMAL_SCALE as u32;
    let rounded =
        value.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    let widen = 10i128.pow(scale - rounded.scale());
    let stored = rounded
        .mantissa()
        .checked_mul(widen)
        .filter(|stored| stored.unsigned_abs() < 10u128.pow(u32::from(DECIMAL_PRECISION)));
    stored.ok_or_else(|| {
        ArrowError::ComputeError(format!(
            "{value} does not fit Decimal128({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
        ))
    })
}

/// Line items as one record batch, in the order given.
///
/// Each text column is sized exactly before it is filled (its bytes summed first): grown as
/// filled, a month's columns of a few megabytes each were copied at every doubling, which
/// was most of writing the line-item file. The fields are read through generic functions,
/// not function pointers, so that each column's loop is compiled for its field.
pub fn line_items_to_batch(items: &[LineItem]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        text_column(items, |item| &item.billing_account_id),
        time_column(items, |item| item.billing_period_start),
        time_column(items, |item| item.billing_period_end),
        time_column(items, |item| item.charge_period_start),
        time_column(items, |item| item.charge_period_end),
        text_column(items, |item| item.charge_category.as_str()),
        optional_text_column(items, |item| item.charge_class.as_deref()),
        text_column(items, |item| item.charge_frequency.as_str()),
        text_column(items, |item| &item.charge_description),
        optional_text_column(items, |item| item.resource_id.as_deref()),
        optional_text_column(items, |item| item.resource_type.as_deref()),
        text_column(items, |item| &item.sku_id),
        optional_text_column(items, |item| item.region_id.as_deref()),
        decimal_column(items, |item| item.consumed_quantity)?,
        text_column(items, |item| &item.consumed_unit),
        decimal_column(items, |item| item.pricing_quantity)?,
        text_column(items, |item| &item.pricing_unit),
        decimal_column(items, |item| item.list_unit_price)?,
        decimal_column(items, |item| item.billed_cost)?,
        text_column(items, |item| &item.billing_currency),
        text_column(items, |item| &item.provider_name),
        text_column(items, |item| &item.x_rule),
        text_column(items, |item| &item.x_tariff_id),
        text_column(items, |item| &item.x_tariff_version),
        text_column(items, |item| &item.x_lineage),
    ];
    RecordBatch::try_new(line_item_arrow_schema(), columns)
}

fn text_column(items: &[LineItem], field: impl Fn(&LineItem) -> &str) -> ArrayRef {
    optional_text_column(items, |item| Some(field(item)))
}

fn optional_text_column(items: &[LineItem], field: impl Fn(&LineItem) -> Option<&str>) -> ArrayRef {
    let bytes = items
        .iter()
        .map(|item| field(item).map_or(0, str::len))
        .sum();
    let mut column = StringBuilder::with_capacity(items.len(), bytes);
    for item in items {
        column.append_option(field(item));
    }
    Arc::new(column.finish())
}

fn time_column(items: &[LineItem], field: impl Fn(&LineItem) -> DateTime<Utc>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(
            items.iter().map(|item| field(item).timestamp_micros()),
        )
        .with_timezone("UTC"),
    )
}

fn decimal_column(
    items: &[LineItem],
    field: impl Fn(&LineItem) -> Decimal,
) -> Result<ArrayRef, ArrowError> {
    let values = items
        .iter()
        .map(|item| decimal_to_i128(field(item)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(
        Decimal128Array::from(values).with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn decimals_keep_twenty_places_and_refuse_overflow() {
        let price = Decimal::from_str("0.03").expect("decimal") / Decimal::from(672);
        let stored = decimal_to_i128(price).expect("fits");
        assert_eq!(stored, 4_464_285_714_285_714i128); // 0.00004464285714285714
        assert_eq!(
            decimal_to_i128(Decimal::from(3)).expect("fits"),
            3 * 10i128.pow(20)
        );
        assert!(decimal_to_i128(Decimal::from_str("1e19").expect("decimal")).is_err());
    }
}
