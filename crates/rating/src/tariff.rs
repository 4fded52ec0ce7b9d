//! Loading tariff files: reading them, and refusing two versions of the same tariff in
//! force from the same day. What a tariff document may say is checked by
//! [`tally_model::tariff::check`], whose items are re-exported here.

use std::path::{Path, PathBuf};

use tally_model::tariff::Tariff;
pub use tally_model::tariff::check::{
    FieldPath, Problem, Step, check, coverable, line_of, time_zone, version_for,
};

use crate::error::{Error, Result};

/// Reads, parses and checks a tariff file.
pub fn check_tariff(path: &Path) -> Result<Tariff> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: format!("read tariff {}", path.display()),
        source,
    })?;
    parse_tariff(path, &text)
}

/// Parses and checks tariff text; `path` only names it in errors.
pub fn parse_tariff(path: &Path, text: &str) -> Result<Tariff> {
    tally_model::tariff::check::parse(text).map_err(|detail| Error::Tariff {
        path: path.to_owned(),
        detail,
    })
}

/// Loads every tariff file and refuses two files for the same (id, effective_from).
pub fn load_tariffs(paths: &[PathBuf]) -> Result<Vec<Tariff>> {
    let mut tariffs: Vec<Tariff> = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let tariff = check_tariff(path)?;
        if let Some(earlier) = tariffs.iter().position(|other| {
            other.id == tariff.id && other.effective_from == tariff.effective_from
        }) {
            return Err(Error::DuplicateTariffVersion {
                id: tariff.id,
                effective_from: tariff.effective_from,
                first: paths[earlier].clone(),
                second: paths[index].clone(),
            });
        }
        tariffs.push(tariff);
    }
    Ok(tariffs)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("test.toml")
    }

    fn hetzner() -> &'static str {
        crate::reference_tariffs()[2].1
    }

    /// The 1-based line of the first occurrence of `needle` in `text`.
    fn line_containing(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .map(|index| index + 1)
            .unwrap_or_else(|| panic!("{needle} not in the text"))
    }

    #[test]
    fn every_reference_tariff_checks() {
        for (name, text) in crate::reference_tariffs() {
            parse_tariff(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_misspelt_field_is_named_with_its_line() {
        let text = hetzner().replace("monthly_cap = \"3.79\"", "monthly_kap = \"3.79\"");
        let message = parse_tariff(&path(), &text)
            .expect_err("unknown field")
            .to_string();
        let line = line_containing(&text, "monthly_kap");
        assert!(
            message.contains("monthly_kap")
                && message.contains(&format!("line {line}"))
                && message.contains("test.toml"),
            "{message}"
        );
    }

    #[test]
    fn a_negative_price_is_reported_at_its_own_line() {
        let text = hetzner().replace("price = \"0.0109\"", "price = \"-0.0109\"");
        let message = parse_tariff(&path(), &text)
            .expect_err("negative")
            .to_string();
        let line = line_containing(&text, "-0.0109");
        assert!(
            message.contains(&format!("line {line}: products[1].time[0].price"))
                && message.contains("cx32")
                && message.contains("negative"),
            "{message}"
        );
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = hetzner()
            .replace("Europe/Berlin", "Mars/Olympus")
            .replace("price = \"0.0109\"", "price = \"-0.0109\"")
            .replace("sku = \"cx32\"", "sku = \"cx22\"");
        let message = parse_tariff(&path(), &text)
            .expect_err("three problems")
            .to_string();
        assert!(message.contains("Mars/Olympus"), "{message}");
        assert!(message.contains("negative"), "{message}");
        assert!(message.contains("listed twice"), "{message}");
        let duplicate = text
            .lines()
            .enumerate()
            .filter(|(_, line)| line.contains("sku = \"cx22\""))
            .map(|(index, _)| index + 1)
            .last()
            .expect("two cx22");
        assert!(
            message.contains(&format!("line {duplicate}: products[1].sku")),
            "{message}"
        );
    }

    #[test]
    fn semantic_mistakes_are_refused() {
        for (from, to, expected) in [
            (
                "quantity = \"month_fraction\"",
                "quantity = \"minutes\"",
                "needs per = \"hour\"",
            ),
            (
                "states = { active = \"1\" }\nmonthly_cap = \"0.50\"",
                "states = { running = \"1\" }\nmonthly_cap = \"0.50\"",
                "a ip reports only",
            ),
            (
                "counters = [\"out_external\"]",
                "counters = []",
                "counters: product 'cx22' (server): is empty",
            ),
            (
                "accounting = \"month_fraction\"",
                "accounting = \"unit_hours\"",
                "needs hours_per_month",
            ),
        ] {
            assert!(hetzner().contains(from), "{from}");
            let text = hetzner().replacen(from, to, 1);
            let message = parse_tariff(&path(), &text)
                .expect_err(expected)
                .to_string();
            assert!(message.contains(expected), "{expected}: {message}");
        }
        let trooper = crate::reference_tariffs()[0].1.replacen(
            "configuration_prices = { \"8\" = \"7.67\" }",
            "configuration_prices = { \"eight\" = \"7.67\" }",
            1,
        );
        let message = parse_tariff(&path(), &trooper)
            .expect_err("key")
            .to_string();
        assert!(message.contains("not a GPU count"), "{message}");
    }

    #[test]
    fn two_files_of_one_tariff_version_are_refused() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (first, second) = (
            directory.path().join("a.toml"),
            directory.path().join("b.toml"),
        );
        std::fs::write(&first, hetzner()).expect("write");
        std::fs::write(&second, hetzner()).expect("write");
        let message = load_tariffs(&[first, second])
            .expect_err("duplicate")
            .to_string();
        assert!(
            message.contains("a.toml") && message.contains("b.toml"),
            "{message}"
        );
        let later = directory.path().join("c.toml");
        std::fs::write(
            &later,
            hetzner().replace(
                "effective_from = \"2026-01-01\"",
                "effective_from = \"2026-07-01\"",
            ),
        )
        .expect("write");
        let tariffs =
            load_tariffs(&[directory.path().join("a.toml"), later]).expect("two versions");
        let june = NaiveDate::from_ymd_opt(2026, 6, 1).expect("date");
        let july = NaiveDate::from_ymd_opt(2026, 7, 1).expect("date");
        let effective = |day| version_for(&tariffs, "hetzner-cloud", day).map(|t| t.effective_from);
        assert_eq!(effective(june), NaiveDate::from_ymd_opt(2026, 1, 1));
        assert_eq!(effective(july), Some(july));
    }
}
