//! Money and other exact decimals in text formats: always strings (`"0.006"`), never
//! numbers, because a TOML or JSON number may pass through a float and lose a digit.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

struct DecimalString;

impl Visitor<'_> for DecimalString {
    type Value = Decimal;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a decimal number written as a string, such as \"0.006\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Decimal, E> {
        Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| E::custom(format!("'{text}' is not a decimal number")))
    }
}

/// `#[serde(with = "tally_model::money::string")]` for `Decimal`.
pub mod string {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&value.normalize())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        deserializer.deserialize_str(DecimalString)
    }
}

/// `#[serde(with = "tally_model::money::optional_string")]` for `Option<Decimal>`.
pub mod optional_string {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(&value.normalize()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        string::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug)]
    struct Price {
        #[serde(with = "string")]
        value: Decimal,
    }

    #[test]
    fn strings_are_accepted_and_numbers_refused() {
        let price: Price = serde_json::from_str(r#"{"value":"0.0109"}"#).expect("string");
        assert_eq!(price.value, Decimal::new(109, 4));
        assert_eq!(
            serde_json::to_string(&price).expect("json"),
            r#"{"value":"0.0109"}"#
        );
        let error = serde_json::from_str::<Price>(r#"{"value":0.0109}"#).expect_err("float");
        assert!(error.to_string().contains("as a string"), "{error}");
    }
}
