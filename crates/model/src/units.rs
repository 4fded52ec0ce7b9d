//! Byte units as the providers' billing pages use them.
//!
//! GiB = 2^30 and TiB = 2^40 bytes; GB = 10^9 and TB = 10^12 bytes. Quantities stay in
//! bytes (integers) until a tariff converts them into the unit it prices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A unit of bytes that a tariff can price or include.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ByteUnit {
    #[serde(rename = "B")]
    Byte,
    #[serde(rename = "GB")]
    Gigabyte,
    #[serde(rename = "TB")]
    Terabyte,
    #[serde(rename = "GiB")]
    Gibibyte,
    #[serde(rename = "TiB")]
    Tebibyte,
}

impl ByteUnit {
    pub const ALL: [ByteUnit; 5] = [
        ByteUnit::Byte,
        ByteUnit::Gigabyte,
        ByteUnit::Terabyte,
        ByteUnit::Gibibyte,
        ByteUnit::Tebibyte,
    ];

    pub const fn bytes(self) -> u64 {
        match self {
            ByteUnit::Byte => 1,
            ByteUnit::Gigabyte => 1_000_000_000,
            ByteUnit::Terabyte => 1_000_000_000_000,
            ByteUnit::Gibibyte => 1 << 30,
            ByteUnit::Tebibyte => 1 << 40,
        }
    }

    pub const fn symbol(self) -> &'static str {
        match self {
            ByteUnit::Byte => "B",
            ByteUnit::Gigabyte => "GB",
            ByteUnit::Terabyte => "TB",
            ByteUnit::Gibibyte => "GiB",
            ByteUnit::Tebibyte => "TiB",
        }
    }
}

impl fmt::Display for ByteUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl FromStr for ByteUnit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|unit| unit.symbol() == text)
            .ok_or_else(|| format!("'{text}' is not a byte unit (B, GB, TB, GiB, TiB)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units_differ() {
        assert_eq!(ByteUnit::Tebibyte.bytes(), 1_099_511_627_776);
        assert_eq!(ByteUnit::Terabyte.bytes(), 1_000_000_000_000);
        assert_eq!("GiB".parse::<ByteUnit>(), Ok(ByteUnit::Gibibyte));
        assert!("gb".parse::<ByteUnit>().is_err());
    }
}
