//! Convenience methods on the generated contract types.

use crate::money::{self, MoneyError};
use crate::types::{ConversionState, Exclusion, LineCashback, LineItem, Money, PluginError, RuleDecision};
use std::fmt;

impl Money {
    /// `minor` units of `currency`.
    pub fn new(minor: i64, currency: &str) -> Money {
        Money { minor, currency: currency.to_string() }
    }

    /// Zero in `currency`.
    pub fn zero(currency: &str) -> Money {
        Money::new(0, currency)
    }

    /// The sum of two amounts of the same currency.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        Ok(Money::new(money::checked_add(self.minor, other.minor)?, &self.currency))
    }

    /// The difference of two amounts of the same currency.
    pub fn checked_sub(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        Ok(Money::new(money::checked_sub(self.minor, other.minor)?, &self.currency))
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch { left: self.currency.clone(), right: other.currency.clone() })
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&money::format(self.minor, &self.currency))
    }
}

impl ConversionState {
    /// Parses a state name in any case: `PENDING`, `pending`, `Completed`...
    pub fn parse(name: &str) -> Option<ConversionState> {
        [
            ConversionState::Created,
            ConversionState::Pending,
            ConversionState::Adjusted,
            ConversionState::Completed,
            ConversionState::Rejected,
            ConversionState::Reversed,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// The upper-case name used in callbacks and APIs (seed 001: `PENDING`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ConversionState::Created => "CREATED",
            ConversionState::Pending => "PENDING",
            ConversionState::Adjusted => "ADJUSTED",
            ConversionState::Completed => "COMPLETED",
            ConversionState::Rejected => "REJECTED",
            ConversionState::Reversed => "REVERSED",
        }
    }
}

impl PluginError {
    /// The error's message, whatever its kind (the generated `Display` prints the variant
    /// too).
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidInput(m)
            | PluginError::Config(m)
            | PluginError::Upstream(m)
            | PluginError::Internal(m) => m,
        }
    }
}

impl RuleDecision {
    /// A decision that credits nothing, in `currency`.
    pub fn empty(currency: &str) -> RuleDecision {
        RuleDecision {
            lines: Vec::new(),
            exclusions: Vec::new(),
            total: Money::zero(currency),
            hold: None,
            reward_delay_days: None,
            notes: Vec::new(),
        }
    }

    /// Credits `amount` for `line` and adds it to the total.
    pub fn credit_line(
        &mut self,
        line: &LineItem,
        amount: i64,
        rate_bps: Option<u32>,
        reason: &str,
    ) -> Result<(), MoneyError> {
        self.total.minor = money::checked_add(self.total.minor, amount)?;
        self.lines.push(LineCashback { line_id: line.id.clone(), amount, rate_bps, reason: reason.to_string() });
        Ok(())
    }

    /// Excludes `line` (it earns nothing) with a reason.
    pub fn exclude(&mut self, line: &LineItem, reason: &str) {
        self.exclusions.push(Exclusion { line_id: line.id.clone(), reason: reason.to_string() });
    }

    /// Sends the order to manual review with a reason.
    pub fn hold(&mut self, reason: &str) {
        self.hold = Some(reason.to_string());
    }

    /// Caps the total at `cap` minor units, spreading the cap back over the credited
    /// lines in proportion so that the lines still add up to the total.
    pub fn cap_total(&mut self, cap: i64, note: &str) -> Result<(), MoneyError> {
        if self.total.minor <= cap {
            return Ok(());
        }
        let weights: Vec<i64> = self.lines.iter().map(|l| l.amount.max(0)).collect();
        let parts = money::allocate(cap, &weights)?;
        for (line, part) in self.lines.iter_mut().zip(parts) {
            line.amount = part;
        }
        self.total.minor = cap;
        self.notes.push(note.to_string());
        Ok(())
    }
}

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        PluginError::Internal(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_in_any_case_and_errors_give_their_message() {
        assert_eq!(ConversionState::parse("pending"), Some(ConversionState::Pending));
        assert_eq!(ConversionState::parse(" COMPLETED "), Some(ConversionState::Completed));
        assert_eq!(ConversionState::parse("approved"), None);
        assert_eq!(PluginError::Upstream("down".into()).message(), "down");
    }
}
