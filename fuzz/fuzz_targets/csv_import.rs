//! CSV report import (`plugins/csv-report`, compiled natively): an arbitrary column
//! mapping and an arbitrary file, either written cell by cell (quotes, delimiters and line
//! breaks inside cells, ragged rows, blank rows) or as raw bytes.
//!
//! Properties:
//! - never a panic; the file as a whole fails only as `InvalidInput` (not UTF-8, no
//!   header, a mapped column missing or twice) and a configuration only as `Config`;
//! - every data row is accounted for: events + rejected rows = the file's records after
//!   the header that are not entirely blank (as the `csv` crate reads them with the same
//!   delimiter), and a rejected row's number is that record's (the header is row 1),
//!   each row rejected at most once, in file order;
//! - one event per transaction id; every event has a transaction id, a three-letter
//!   upper-case currency, the configured network, every header column in `raw`, and line
//!   items (when mapped) holding the row's amount;
//! - a file written cell by cell is read back exactly: each accepted row's `raw` values
//!   are the cells written.
//!
//! An input starting with `#` is the configuration (JSON, one line) and the file after it:
//! the seed corpus holds the plugin's fixtures in that form.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashback_sdk::prelude::PluginError;
use cashbackd_fuzz::tricky_string;
use csv_report::{Config, Report};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const FIELDS: [&str; 13] = [
    "transaction_id",
    "event_time",
    "click_id",
    "order_id",
    "amount",
    "commission",
    "currency",
    "state",
    "event_type",
    "reason",
    "merchant_ref",
    "line_sku",
    "line_category",
];
const HEADERS: [&str; 14] = [
    "Transaction ID",
    "Date",
    "Sub ID",
    "Order",
    "Sale Amount",
    "Commission",
    "Currency",
    "Status",
    "Type",
    "Reason",
    "Advertiser",
    "SKU",
    "Category",
    "transaction id",
];

#[derive(Debug)]
enum File {
    Cells { header: Vec<String>, rows: Vec<Vec<String>>, bom: bool, crlf: bool },
    Raw(Vec<u8>),
}

#[derive(Debug)]
struct Input {
    config: Value,
    delimiter: u8,
    file: File,
}

fn cell(u: &mut Unstructured<'_>, column: &str) -> arbitrary::Result<String> {
    if u.ratio(1, 4)? {
        return tricky_string(u);
    }
    Ok(match column {
        "Transaction ID" | "transaction id" => u.choose(&["T-1", "T-2", "T-3", "", " T-1 "])?,
        "Date" => u.choose(&["2026-01-03", "2026-01-03T10:20:30Z", "1767435630", "03/01/2026", ""])?,
        "Sale Amount" | "Commission" => u.choose(&["12.34", "0", "", "-1", "1,5", "1234", "9223372036854775808"])?,
        "Currency" => u.choose(&["EUR", "usd", "", "EURO"])?,
        "Status" => u.choose(&["approved", "pending", "declined", "PENDING", "completed", "", "paid"])?,
        _ => u.choose(&["x", "", "a,b", "say \"hi\"", "line\nbreak"])?,
    }
    .to_string())
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut columns = serde_json::Map::new();
        for (i, field) in FIELDS.iter().enumerate() {
            if i < 2 || u.ratio(1, 2)? {
                let name = if u.ratio(1, 16)? { tricky_string(u)? } else { HEADERS[i].to_string() };
                columns.insert(field.to_string(), json!(name));
            }
        }
        let mut config = json!({ "columns": columns });
        if u.ratio(3, 4)? {
            config["default_currency"] = json!(u.choose(&["EUR", "jpy", "EURO"])?);
        }
        if u.arbitrary()? {
            let mut states = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let key = u.choose(&["approved", "pending", "declined", "Approved"])?.to_string();
                states.insert(key, json!(u.choose(&["COMPLETED", "PENDING", "REJECTED", "PAID"])?));
            }
            config["states"] = Value::Object(states);
        }
        if u.ratio(1, 4)? {
            config["amount_format"] = json!(u.choose(&["decimal", "minor"])?);
        }
        if u.ratio(1, 4)? {
            config["network"] = json!("refnet");
        }
        let delimiter = *u.choose(b",;\t| \"\n")?;
        if delimiter != b',' {
            config["delimiter"] = json!((delimiter as char).to_string());
        }
        let file = if u.ratio(1, 5)? {
            File::Raw(Vec::<u8>::arbitrary(u)?)
        } else {
            let mut header: Vec<String> = Vec::new();
            for h in HEADERS {
                if u.ratio(4, 5)? {
                    header.push(h.to_string());
                }
            }
            if u.ratio(1, 8)? {
                header.push(tricky_string(u)?);
            }
            let mut rows = Vec::new();
            for _ in 0..u.int_in_range(0..=8)? {
                let width = match u.int_in_range(0..=9)? {
                    0 => header.len() + 1,
                    1 => header.len().saturating_sub(1),
                    _ => header.len(),
                };
                let row = (0..width)
                    .map(|i| cell(u, header.get(i).map_or("", String::as_str)))
                    .collect::<arbitrary::Result<Vec<_>>>()?;
                rows.push(if u.ratio(1, 10)? { vec![String::new(); width] } else { row });
            }
            File::Cells { header, rows, bom: u.ratio(1, 8)?, crlf: u.arbitrary()? }
        };
        Ok(Input { config, delimiter, file })
    }
}

/// Writes cells as a spreadsheet exports them: quoted when needed, `""` for a quote.
fn write(delimiter: u8, header: &[String], rows: &[Vec<String>], bom: bool, crlf: bool) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
        .from_writer(Vec::new());
    for r in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        w.write_record(r).ok();
    }
    let mut out = if bom { "\u{feff}".as_bytes().to_vec() } else { Vec::new() };
    out.extend(w.into_inner().unwrap_or_default());
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let (config, file) = text.split_at(text.iter().position(|b| *b == b'\n').unwrap_or(text.len()));
        let Ok(config) = serde_json::from_slice::<Value>(config) else { return };
        let delimiter = match config.get("delimiter").and_then(Value::as_str).map(str::as_bytes) {
            Some([b]) => *b,
            _ => b',',
        };
        let file = File::Raw(file.get(1..).unwrap_or_default().to_vec());
        check(Input { config, delimiter, file });
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
});

fn check(input: Input) {
    let Ok(config) = serde_json::from_value::<Config>(input.config.clone()) else {
        return; // refused by the plugin's schema before the adapter runs
    };
    let report = match Report::new(config) {
        Ok(r) => r,
        Err(PluginError::Config(m)) => {
            assert!(!m.is_empty());
            return;
        }
        Err(other) => panic!("a configuration mistake is a Config error, got {other:?}"),
    };
    let (contents, cells) = match &input.file {
        File::Raw(bytes) => (bytes.clone(), None),
        File::Cells { header, rows, bom, crlf } => {
            (write(input.delimiter, header, rows, *bom, *crlf), Some((header, rows)))
        }
    };
    let result = match report.parse("report.csv", &contents) {
        Ok(r) => r,
        Err(PluginError::InvalidInput(m)) => {
            assert!(m.starts_with("report.csv: "), "{m}");
            return;
        }
        Err(other) => panic!("a bad file is InvalidInput, got {other:?}"),
    };

    // The oracle: the records as the csv crate reads them with the same settings.
    let text = std::str::from_utf8(&contents).expect("accepted files are UTF-8");
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(input.delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("UTF-8 text reads")).collect();
    let header_len = records.first().map_or(0, |h| h.len());
    let data: Vec<(u32, &csv::StringRecord)> = records
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, r)| !r.iter().all(|v| v.trim().is_empty()))
        .map(|(i, r)| (u32::try_from(i + 1).expect("small"), r))
        .collect();
    assert_eq!(
        result.events.len() + result.rejected.len(),
        data.len(),
        "every data row is an event or a rejected row: {} + {} for {} rows",
        result.events.len(),
        result.rejected.len(),
        data.len()
    );
    let data_rows: BTreeSet<u32> = data.iter().map(|(n, _)| *n).collect();
    let mut last = 1;
    for r in &result.rejected {
        assert!(data_rows.contains(&r.row), "rejected row {} is not a data row", r.row);
        assert!(r.row > last, "rejected rows in file order, each once: {} after {last}", r.row);
        last = r.row;
        assert!(!r.reason.is_empty());
    }

    let network = input.config.get("network").and_then(Value::as_str).unwrap_or("");
    let mut ids = BTreeSet::new();
    for e in &result.events {
        assert!(!e.transaction_id.is_empty());
        assert!(ids.insert(e.transaction_id.clone()), "transaction {:?} twice", e.transaction_id);
        let c = &e.currency;
        assert!(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()), "currency {c:?}");
        assert_eq!(e.network, network);
        assert_eq!(e.raw.len(), header_len, "raw has every column");
        assert!(e.line_items.iter().all(|l| l.amount == e.amount && l.quantity == 1));
    }

    // Written cell by cell: every accepted row is one of the rows written, exactly.
    // (Unless the header is empty or starts with what reads as a byte order mark: the
    // first record or cell is then not the one written.)
    if let Some((header, rows)) = cells.filter(|(h, _)| h.first().is_some_and(|c| !c.starts_with('\u{feff}'))) {
        let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
        for e in &result.events {
            let names: Vec<&String> = e.raw.iter().map(|(k, _)| k).collect();
            assert_eq!(names, header.iter().collect::<Vec<_>>(), "raw names are the header's");
            let values: Vec<String> = e.raw.iter().map(|(_, v)| v.clone()).collect();
            assert!(rows.contains(&values), "{values:?} is not a row written");
        }
    }
}
