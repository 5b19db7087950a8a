//! `csv-report`: a network's offline CSV report (a header row, then one row per
//! transaction) turned into conversion events, the columns named by configuration.
//!
//! Each data row becomes one event or one rejected row (`row` counts the header as row 1,
//! as a spreadsheet shows it) whose reason names the column and the value. The file as a
//! whole fails only when it is not UTF-8, has no header row, or its header lacks a column
//! the configuration maps. Quoted fields (RFC 4180: delimiters, `""` quotes and line
//! breaks inside quotes) are read by the `csv` crate.

use cashback_sdk::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The plugin's configuration (see `cashback-plugin.toml` for the schema).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which column holds which event field.
    pub columns: Columns,
    /// The network's status values (case-insensitive) and their states; without it the
    /// status column must hold state names (PENDING, COMPLETED...).
    pub states: Option<BTreeMap<String, String>>,
    /// Currency when the row names none.
    pub default_currency: Option<String>,
    /// Event type when the row names none.
    #[serde(default = "sale")]
    pub default_event_type: String,
    /// How amounts are written.
    #[serde(default)]
    pub amount_format: AmountFormat,
    /// The field delimiter: one ASCII character.
    #[serde(default = "comma")]
    pub delimiter: String,
    /// cashbackd's id of the network, copied into events.
    #[serde(default)]
    pub network: String,
}

fn sale() -> String {
    "sale".into()
}

fn comma() -> String {
    ",".into()
}

/// The column header that holds each event field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// The network's transaction id (required).
    pub transaction_id: String,
    /// When the conversion happened (required: a file has no receive time to fall back on).
    pub event_time: Option<String>,
    /// The click id cashbackd minted.
    pub click_id: Option<String>,
    /// The merchant's order id.
    pub order_id: Option<String>,
    /// Order value.
    pub amount: Option<String>,
    /// Commission.
    pub commission: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// The network's status value.
    pub state: Option<String>,
    /// The event's name.
    pub event_type: Option<String>,
    /// The network's reason for a rejection or adjustment.
    pub reason: Option<String>,
    /// The merchant's id at the network.
    pub merchant_ref: Option<String>,
    /// SKU of the row's single product (makes the row's line item).
    pub line_sku: Option<String>,
    /// Category of the row's single product (makes the row's line item).
    pub line_category: Option<String>,
}

/// How the report writes amounts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmountFormat {
    /// "12.34": a decimal in the currency's major unit, rounded down to minor units.
    #[default]
    Decimal,
    /// "1234": already in minor units.
    Minor,
}

/// A checked configuration.
#[derive(Debug)]
pub struct Report {
    config: Config,
    /// (lower-cased status value, state); `None`: state names.
    states: Option<Vec<(String, ConversionState)>>,
    default_currency: Option<String>,
    delimiter: u8,
}

/// An event field and the column the configuration maps it to.
type Mapped<'a> = (&'static str, &'a str);

impl Report {
    /// Checks a configuration; errors are [`PluginError::Config`] naming the field.
    pub fn new(config: Config) -> Result<Report, PluginError> {
        let bad = |field: &str, why: String| Err(PluginError::Config(format!("{field}: {why}")));
        if config.columns.event_time.is_none() {
            return bad("columns.event_time", "required: a report row must say when its conversion happened".into());
        }
        for (field, column) in mapped(&config.columns) {
            if column.trim().is_empty() {
                return bad(&format!("columns.{field}"), "the column name is empty".into());
            }
        }
        let states = match &config.states {
            None => None,
            Some(map) => {
                let mut states: Vec<(String, ConversionState)> = Vec::new();
                for (value, state) in map {
                    let Some(parsed) = ConversionState::parse(state) else {
                        return bad(
                            &format!("states.{value}"),
                            format!(
                                "{state:?} is not one of PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED, CREATED"
                            ),
                        );
                    };
                    let key = value.trim().to_lowercase();
                    if states.iter().any(|(k, s)| *k == key && *s != parsed) {
                        return bad(
                            &format!("states.{value}"),
                            "maps to two states (status values ignore case)".into(),
                        );
                    }
                    states.push((key, parsed));
                }
                Some(states)
            }
        };
        let default_currency = match &config.default_currency {
            Some(c) => match money::currency_code(c) {
                Some(c) => Some(c),
                None => return bad("default_currency", format!("{c:?} is not an ISO 4217 code")),
            },
            None if config.columns.currency.is_none() => {
                return bad("default_currency", "required when columns.currency is not set".into());
            }
            None => None,
        };
        let delimiter = match config.delimiter.as_bytes() {
            [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => *b,
            _ => return bad("delimiter", format!("{:?} is not one ASCII character", config.delimiter)),
        };
        if config.default_event_type.trim().is_empty() {
            return bad("default_event_type", "is empty".into());
        }
        Ok(Report { config, states, default_currency, delimiter })
    }

    /// Parses a whole file.
    pub fn parse(&self, name: &str, contents: &[u8]) -> Result<FileResult, PluginError> {
        let text = std::str::from_utf8(contents).map_err(|e| {
            PluginError::InvalidInput(format!("{name}: not UTF-8 (invalid byte at offset {})", e.valid_up_to()))
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut records = reader.records();
        let header = match records.next() {
            Some(Ok(header)) => header,
            Some(Err(e)) => return Err(PluginError::InvalidInput(format!("{name}: unreadable header row: {e}"))),
            None => return Err(PluginError::InvalidInput(format!("{name}: empty file (no header row)"))),
        };
        let headers: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
        let columns = self.locate(name, &headers)?;

        let mut result = FileResult { events: Vec::new(), rejected: Vec::new() };
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for (index, record) in records.enumerate() {
            let row = u32::try_from(index + 2).unwrap_or(u32::MAX);
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    result.rejected.push(RejectedRow { row, reason: format!("unreadable row: {e}") });
                    continue;
                }
            };
            if record.iter().all(|v| v.trim().is_empty()) {
                continue; // a spreadsheet's empty row (",,,,")
            }
            let values: Vec<&str> = record.iter().collect();
            let outcome = if values.len() != headers.len() {
                Err(format!(
                    "{} fields where the header has {} (an unquoted delimiter or a missing field?)",
                    values.len(),
                    headers.len()
                ))
            } else {
                self.event(&Row { headers: &headers, values: &values, columns: &columns })
            };
            match outcome {
                Ok(event) => {
                    if let Some(first) = seen.get(&event.transaction_id) {
                        let reason = format!(
                            "transaction {:?} is already on row {first} (one row per transaction)",
                            event.transaction_id
                        );
                        result.rejected.push(RejectedRow { row, reason });
                    } else {
                        seen.insert(event.transaction_id.clone(), row);
                        result.events.push(event);
                    }
                }
                Err(reason) => result.rejected.push(RejectedRow { row, reason }),
            }
        }
        Ok(result)
    }

    /// The index of every mapped column in the header: an exact match of the trimmed
    /// name, else the one match ignoring case.
    fn locate(&self, name: &str, headers: &[String]) -> Result<BTreeMap<&'static str, usize>, PluginError> {
        let mut found = BTreeMap::new();
        for (field, column) in mapped(&self.config.columns) {
            let column = column.trim();
            let exact: Vec<usize> = (0..headers.len()).filter(|i| headers[*i] == column).collect();
            let matches = if exact.is_empty() {
                (0..headers.len()).filter(|i| headers[*i].eq_ignore_ascii_case(column)).collect()
            } else {
                exact
            };
            match matches[..] {
                [i] => {
                    found.insert(field, i);
                }
                [] => {
                    return Err(PluginError::InvalidInput(format!(
                        "{name}: the header has no column {column:?} (columns.{field}); its columns: {}",
                        headers.join(", ")
                    )));
                }
                _ => {
                    return Err(PluginError::InvalidInput(format!(
                        "{name}: the header has column {column:?} (columns.{field}) more than once"
                    )));
                }
            }
        }
        Ok(found)
    }

    /// One data row as an event, or why not.
    fn event(&self, row: &Row) -> Result<ConversionEvent, String> {
        let transaction_id = match row.get("transaction_id") {
            Some("") | None => return Err(row.invalid("transaction_id", "is empty")),
            Some(v) => v.to_string(),
        };
        let state = match row.get("state") {
            None => ConversionState::Pending,
            Some("") => return Err(row.invalid("state", "is empty")),
            Some(value) => self.state(value).ok_or_else(|| {
                let known = match &self.states {
                    Some(states) => states.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
                    None => "PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED, CREATED".into(),
                };
                row.invalid("state", &format!("unknown status {value:?}; known: {known}"))
            })?,
        };
        let currency = match row.get("currency").filter(|v| !v.is_empty()) {
            Some(v) => money::currency_code(v)
                .ok_or_else(|| row.invalid("currency", &format!("{v:?} is not an ISO 4217 code")))?,
            None => self
                .default_currency
                .clone()
                .ok_or_else(|| row.invalid("currency", "is empty and there is no default_currency"))?,
        };
        let amount = self.amount(row, "amount", &currency)?;
        let commission = self.amount(row, "commission", &currency)?;
        let event_time = match row.get("event_time") {
            Some("") | None => return Err(row.invalid("event_time", "is empty")),
            Some(v) => parse_timestamp(v).map_err(|e| row.invalid("event_time", e.message()))?,
        };
        let optional = |field: &str| row.get(field).filter(|v| !v.is_empty()).map(str::to_string);
        let line_items = if row.columns.contains_key("line_sku") || row.columns.contains_key("line_category") {
            vec![LineItem {
                id: "1".into(),
                sku: row.get("line_sku").unwrap_or_default().to_string(),
                category: row.get("line_category").unwrap_or_default().to_string(),
                quantity: 1,
                amount,
            }]
        } else {
            Vec::new()
        };
        Ok(ConversionEvent {
            network: self.config.network.clone(),
            transaction_id,
            click_id: optional("click_id"),
            order_id: optional("order_id"),
            event_type: optional("event_type").unwrap_or_else(|| self.config.default_event_type.clone()),
            state,
            amount,
            commission,
            currency,
            event_time,
            reason: optional("reason"),
            merchant_ref: optional("merchant_ref"),
            line_items,
            raw: row.headers.iter().cloned().zip(row.values.iter().map(|v| v.to_string())).collect(),
        })
    }

    fn state(&self, value: &str) -> Option<ConversionState> {
        match &self.states {
            None => ConversionState::parse(value),
            Some(states) => {
                let key = value.to_lowercase();
                states.iter().find(|(k, _)| *k == key).map(|(_, s)| *s)
            }
        }
    }

    /// An amount column in minor units; unmapped or empty is zero.
    fn amount(&self, row: &Row, field: &str, currency: &str) -> Result<i64, String> {
        let value = match row.get(field) {
            None | Some("") => return Ok(0),
            Some(v) => v,
        };
        match self.config.amount_format {
            AmountFormat::Decimal => money::parse_decimal(value, currency, Rounding::Down).map_err(|e| e.to_string()),
            AmountFormat::Minor => {
                value.parse::<i64>().map_err(|_| format!("{value:?} is not a whole number of minor units"))
            }
        }
        .map_err(|why| row.invalid(field, &why))
    }
}

/// Every column the configuration maps, with its field.
fn mapped(c: &Columns) -> Vec<Mapped<'_>> {
    let optional = [
        ("event_time", &c.event_time),
        ("click_id", &c.click_id),
        ("order_id", &c.order_id),
        ("amount", &c.amount),
        ("commission", &c.commission),
        ("currency", &c.currency),
        ("state", &c.state),
        ("event_type", &c.event_type),
        ("reason", &c.reason),
        ("merchant_ref", &c.merchant_ref),
        ("line_sku", &c.line_sku),
        ("line_category", &c.line_category),
    ];
    let mut all = vec![("transaction_id", c.transaction_id.as_str())];
    all.extend(optional.into_iter().filter_map(|(field, column)| column.as_deref().map(|col| (field, col))));
    all
}

/// One data row with the header's column positions.
struct Row<'a> {
    headers: &'a [String],
    values: &'a [&'a str],
    columns: &'a BTreeMap<&'static str, usize>,
}

impl Row<'_> {
    /// The trimmed value of a mapped field; `None` when the field is not mapped.
    fn get(&self, field: &str) -> Option<&str> {
        self.columns.get(field).map(|i| self.values[*i].trim())
    }

    /// A reason naming the column and its value.
    fn invalid(&self, field: &str, why: &str) -> String {
        match self.columns.get(field) {
            Some(i) => format!("column {:?} ({field}) = {:?}: {why}", self.headers[*i], self.values[*i]),
            None => format!("{field}: {why}"),
        }
    }
}

/// The adapter.
pub struct CsvReport;

impl Adapter for CsvReport {
    fn parse_file(name: &str, contents: &[u8]) -> Result<FileResult, PluginError> {
        Report::new(config::get()?)?.parse(name, contents)
    }
}

export_adapter!(CsvReport, fixtures = "fixtures.json");

#[cfg(test)]
mod tests {
    use super::*;
    use cashback_sdk::testing;

    const CONFIG: &str = r#"{
        "network": "refnet",
        "columns": {
            "transaction_id": "Transaction ID", "click_id": "Sub ID", "order_id": "Order",
            "amount": "Sale Amount", "commission": "Commission", "currency": "Currency",
            "state": "Status", "event_time": "Date", "reason": "Decline Reason", "merchant_ref": "Advertiser"
        },
        "states": {"pending": "PENDING", "approved": "COMPLETED", "declined": "REJECTED"},
        "default_currency": "EUR"
    }"#;

    const HEADER: &str =
        "Transaction ID,Sub ID,Order,Sale Amount,Commission,Currency,Status,Date,Decline Reason,Advertiser";

    fn parse(config: &str, contents: &str) -> Result<FileResult, PluginError> {
        testing::set_config(config);
        CsvReport::parse_file("report.csv", contents.as_bytes())
    }

    fn file(rows: &[&str]) -> String {
        format!("{HEADER}\n{}\n", rows.join("\n"))
    }

    fn whole_file_error(config: &str, contents: &str) -> String {
        match parse(config, contents) {
            Err(PluginError::InvalidInput(m)) => m,
            other => panic!("expected the file to fail, got {other:?}"),
        }
    }

    #[test]
    fn good_rows_become_events_in_file_order() {
        let r = parse(
            CONFIG,
            &file(&[
                "T-1,clk-1,O-1,12.34,1.23,usd,Approved,2026-01-03T10:20:30Z,,shop-7",
                "T-2,,,5,0.5,,pending,2026-01-03 10:20:30,,",
            ]),
        )
        .expect("file");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        let [a, b] = &r.events[..] else { panic!("two events: {:?}", r.events) };
        assert_eq!((a.transaction_id.as_str(), a.network.as_str()), ("T-1", "refnet"));
        assert_eq!((a.click_id.as_deref(), a.order_id.as_deref()), (Some("clk-1"), Some("O-1")));
        assert_eq!((a.amount, a.commission, a.currency.as_str()), (1234, 123, "USD"));
        assert_eq!((a.state, a.event_time), (ConversionState::Completed, 1_767_435_630_000));
        assert_eq!(
            (a.reason.as_deref(), a.merchant_ref.as_deref(), a.event_type.as_str()),
            (None, Some("shop-7"), "sale")
        );
        assert_eq!(a.raw.len(), 10);
        assert_eq!(a.raw[0], ("Transaction ID".to_string(), "T-1".to_string()));
        assert_eq!((b.click_id.as_deref(), b.currency.as_str(), b.amount), (None, "EUR", 500));
        assert_eq!(b.state, ConversionState::Pending);
        assert!(a.line_items.is_empty());
    }

    #[test]
    fn a_bad_row_is_rejected_with_its_row_number_column_and_value() {
        let r = parse(
            CONFIG,
            &file(&[
                "T-1,,,12.34,1,,approved,2026-01-03,,",
                "T-2,,,12;34,1,,approved,2026-01-03,,",
                "T-3,,,1,1,,on hold,2026-01-03,,",
                "T-4,,,1,1,,approved,03/01/2026,,",
                "T-5,,,1,1,EURO,approved,2026-01-03,,",
                ",,,1,1,,approved,2026-01-03,,",
                "T-7,,,1,1,,approved,2026-01-03,,",
            ]),
        )
        .expect("file");
        let ids: Vec<&str> = r.events.iter().map(|e| e.transaction_id.as_str()).collect();
        assert_eq!(ids, ["T-1", "T-7"]);
        let rows: Vec<u32> = r.rejected.iter().map(|x| x.row).collect();
        assert_eq!(rows, [3, 4, 5, 6, 7], "the header is row 1");
        let reasons: Vec<&str> = r.rejected.iter().map(|x| x.reason.as_str()).collect();
        assert_eq!(
            reasons[0],
            "column \"Sale Amount\" (amount) = \"12;34\": invalid amount: \"12;34\" is not a decimal number"
        );
        assert!(
            reasons[1]
                .starts_with("column \"Status\" (state) = \"on hold\": unknown status \"on hold\"; known: approved")
        );
        assert!(reasons[2].starts_with("column \"Date\" (event_time) = \"03/01/2026\""), "{}", reasons[2]);
        assert!(reasons[3].contains("\"EURO\" is not an ISO 4217 code"), "{}", reasons[3]);
        assert_eq!(reasons[4], "column \"Transaction ID\" (transaction_id) = \"\": is empty");
    }

    #[test]
    fn quoted_fields_keep_delimiters_quotes_and_line_breaks() {
        let contents = format!(
            "{HEADER}\r\n\"T-1\",\"a,b\",\"say \"\"hi\"\"\",\"1,5\",0,EUR,approved,2026-01-03,\"line one\r\nline two\",m\r\n\
             T-2,,,1,0,EUR,declined,2026-01-03,\"too late, sorry\",m\r\n"
        );
        let minor = CONFIG.replace(r#""default_currency""#, r#""amount_format": "minor", "default_currency""#);
        let r = parse(&minor, &contents).expect("file");
        assert_eq!(r.rejected.len(), 1, "{:?}", r.rejected);
        assert_eq!(r.rejected[0].row, 2);
        assert!(r.rejected[0].reason.contains("\"1,5\" is not a whole number"), "{}", r.rejected[0].reason);
        let e = &r.events[0];
        assert_eq!(e.transaction_id, "T-2");
        assert_eq!(e.reason.as_deref(), Some("too late, sorry"));
        assert_eq!(e.state, ConversionState::Rejected);
        let ok = contents.replace("\"1,5\"", "150");
        let r = parse(&minor, &ok).expect("file");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        let e = &r.events[0];
        assert_eq!((e.click_id.as_deref(), e.order_id.as_deref()), (Some("a,b"), Some("say \"hi\"")));
        assert_eq!(e.reason.as_deref(), Some("line one\r\nline two"));
        assert_eq!(e.amount, 150);
        assert_eq!(r.events[1].transaction_id, "T-2");
    }

    #[test]
    fn rows_are_counted_as_records_not_lines() {
        let contents =
            file(&["T-1,,,1,0,,approved,2026-01-03,\"multi\nline\nreason\",", "T-2,,,x,0,,approved,2026-01-03,,"]);
        let r = parse(CONFIG, &contents).expect("file");
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].row, 3, "the third record, though it starts on line 5");
    }

    #[test]
    fn a_header_without_a_mapped_column_fails_the_file() {
        let m = whole_file_error(
            CONFIG,
            "Transaction ID,Sub ID,Order,Sale Amount,Commission,Currency,Status,Date,Advertiser\n",
        );
        assert!(m.contains("\"Decline Reason\" (columns.reason)"), "{m}");
        assert!(m.starts_with("report.csv: "), "{m}");
        let m = whole_file_error(CONFIG, "");
        assert!(m.contains("no header row"), "{m}");
        let m = whole_file_error(CONFIG, &format!("{HEADER},Status\n"));
        assert!(m.contains("more than once"), "{m}");
    }

    #[test]
    fn header_names_match_ignoring_surrounding_space_and_case() {
        let header =
            " transaction id ,SUB ID,order,sale amount,commission,currency,status,date,decline reason,advertiser";
        let r = parse(CONFIG, &format!("{header}\nT-1,,,1,0,,approved,2026-01-03,,\n")).expect("file");
        assert_eq!(r.events.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_utf8_fails_and_a_bom_is_ignored() {
        testing::set_config(CONFIG);
        let mut latin1 = file(&["T-1,,,1,0,,approved,2026-01-03,,"]).into_bytes();
        latin1.extend_from_slice(b"T-2,,,1,0,,approved,2026-01-03,Caf\xe9,\n");
        match CsvReport::parse_file("r.csv", &latin1) {
            Err(PluginError::InvalidInput(m)) => assert!(m.contains("not UTF-8"), "{m}"),
            other => panic!("expected a whole-file error, got {other:?}"),
        }
        let bom = format!("\u{feff}{}", file(&["T-1,,,1,0,,approved,2026-01-03,,"]));
        assert_eq!(parse(CONFIG, &bom).expect("file").events.len(), 1);
    }

    #[test]
    fn rows_with_the_wrong_number_of_fields_are_rejected() {
        let r = parse(CONFIG, &file(&["T-1,,,1,5,0,,approved,2026-01-03,,", "T-2,,,1,0,,approved"])).expect("file");
        assert_eq!(r.rejected.iter().map(|x| x.row).collect::<Vec<_>>(), [2, 3]);
        assert!(r.rejected[0].reason.starts_with("11 fields where the header has 10"), "{}", r.rejected[0].reason);
    }

    #[test]
    fn a_transaction_twice_in_one_file_is_rejected_the_second_time() {
        let r = parse(CONFIG, &file(&["T-1,,,1,0,,pending,2026-01-03,,", "T-1,,,2,0,,approved,2026-01-04,,"]))
            .expect("file");
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].amount, 100);
        assert_eq!(r.rejected[0].row, 3);
        assert!(r.rejected[0].reason.contains("already on row 2"), "{}", r.rejected[0].reason);
    }

    #[test]
    fn empty_rows_are_skipped_but_counted() {
        let r = parse(CONFIG, &file(&[",,,,,,,,,", "T-1,,,x,0,,approved,2026-01-03,,"])).expect("file");
        assert!(r.events.is_empty());
        assert_eq!(r.rejected.iter().map(|x| x.row).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn blank_lines_are_skipped_and_not_counted() {
        let contents =
            format!("{HEADER}\n\nT-1,,,1,0,,approved,2026-01-03,,\n\n\nT-2,,,x,0,,approved,2026-01-03,,\n\n");
        let r = parse(CONFIG, &contents).expect("file");
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.rejected.iter().map(|x| x.row).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn other_delimiters_minor_units_and_state_names_without_a_mapping() {
        let config = r#"{
            "columns": {"transaction_id": "id", "amount": "cents", "state": "state", "event_time": "at",
                        "event_type": "kind", "line_sku": "sku", "line_category": "cat"},
            "delimiter": ";", "amount_format": "minor", "default_currency": "JPY", "default_event_type": "order"
        }"#;
        let r = parse(
            config,
            "id;cents;state;at;kind;sku;cat\nA;1500;completed;1767435630;;S-1;books\nB;7;paid;0;lead;;\n",
        )
        .expect("file");
        let e = &r.events[0];
        assert_eq!(
            (e.amount, e.currency.as_str(), e.state, e.event_type.as_str()),
            (1500, "JPY", ConversionState::Completed, "order")
        );
        assert_eq!(
            e.line_items,
            [LineItem { id: "1".into(), sku: "S-1".into(), category: "books".into(), quantity: 1, amount: 1500 }]
        );
        assert_eq!(r.rejected[0].row, 3);
        assert!(r.rejected[0].reason.contains("known: PENDING, ADJUSTED"), "{}", r.rejected[0].reason);
        let tabs = config.replace(r#""delimiter": ";""#, r#""delimiter": "\t""#);
        let r = parse(&tabs, "id\tcents\tstate\tat\tkind\tsku\tcat\nA\t1\tpending\t0\t\t\t\n").expect("file");
        assert_eq!(r.events.len(), 1, "{:?}", r.rejected);
    }

    #[test]
    fn configuration_mistakes_are_config_errors_naming_the_field() {
        let cases = [
            (r#"{"columns": {"transaction_id": "id"}, "default_currency": "EUR"}"#, "columns.event_time"),
            (
                r#"{"columns": {"transaction_id": "id", "event_time": "t", "amout": "a"}, "default_currency": "EUR"}"#,
                "amout",
            ),
            (r#"{"columns": {"transaction_id": "id", "event_time": "t"}}"#, "default_currency"),
            (
                r#"{"columns": {"transaction_id": "id", "event_time": "t"}, "default_currency": "EUR", "delimiter": ";;"}"#,
                "delimiter",
            ),
            (
                r#"{"columns": {"transaction_id": "id", "event_time": "t"}, "default_currency": "EUR", "states": {"x": "PAID"}}"#,
                "states.x",
            ),
            (
                r#"{"columns": {"transaction_id": " ", "event_time": "t"}, "default_currency": "EUR"}"#,
                "columns.transaction_id",
            ),
        ];
        for (config, field) in cases {
            match parse(config, "id,t\n1,0\n") {
                Err(PluginError::Config(m)) => assert!(m.contains(field), "{m:?} should name {field}"),
                other => panic!("{config}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_embedded_fixtures_are_file_cases() {
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../fixtures.json")).expect("fixtures.json is JSON");
        let cases = fixtures.as_array().expect("an array");
        assert!(cases.len() >= 3 && cases.iter().all(|c| c.get("file").is_some()));
    }
}
