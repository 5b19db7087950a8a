//! A report file larger than several of the pieces the host hands `csv-report` (issue 14
//! point 5), imported through the CLI into a fresh database on each backend: quoted line
//! breaks and a blank row do not shift the row numbers, bad rows on either side of a
//! piece boundary and a transaction repeated in a later piece are reported on their true
//! rows, a file with a byte that is not UTF-8 records nothing, and importing the same file
//! again changes nothing.

use crate::backends;
use crate::public::{Install, arg, component};

/// More than three pieces of 2,000 records.
const ROWS: usize = 7_000;

const CONFIG: &str = r#"{"columns": {"transaction_id": "tx", "amount": "sale", "commission": "comm",
    "state": "status", "event_time": "date"}, "states": {"pending": "PENDING"}, "default_currency": "EUR"}"#;

/// The report; data record `k` is file row `k + 2` (a quoted line break makes no row).
fn report() -> String {
    let mut csv = String::from("tx,sale,comm,status,date,note\n");
    for k in 0..ROWS {
        let (tx, sale, status, date) = match k {
            3 => ("T3".to_string(), "oops", "pending", "2026-01-01"), // row 5
            1999 => ("T1999".into(), "10.00", "weird", "2026-01-01"), // row 2001: last of piece 1
            2000 => ("T2000".into(), "10.00", "pending", ""),         // row 2002: first of piece 2
            5000 => ("T10".into(), "10.00", "pending", "2026-01-01"), // row 5002 repeats row 12
            6999 => ("T6999".into(), "x", "pending", "2026-01-01"),   // row 7001, the last
            _ => (format!("T{k}"), "10.00", "pending", "2026-01-01"),
        };
        let note = match k {
            1 | 2500 => "\"two\nlines, a comma\"",
            _ => "plain",
        };
        if k == 4000 {
            csv.push_str(",,,,,\n"); // row 4002: a spreadsheet's empty row
        } else {
            csv.push_str(&format!("{tx},{sale},0.50,{status},{date},{note}\n"));
        }
    }
    csv
}

/// The rows the import must refuse, with a word of each reason.
const REFUSED: [(u32, &str); 5] = [
    (5, "column \"sale\" (amount) = \"oops\""),
    (2001, "column \"status\" (state) = \"weird\""),
    (2002, "column \"date\" (event_time)"),
    (5002, "transaction \"T10\" is already on row 12"),
    (7001, "column \"sale\" (amount) = \"x\""),
];

fn refused_rows(out: &str) -> Vec<u32> {
    out.lines().filter_map(|l| l.trim_start().strip_prefix("row ")?.split(':').next()?.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_several_pieces_imports_with_true_row_numbers_and_again_changes_nothing() {
    let created = ROWS - REFUSED.len() - 1; // and the blank row
    for t in backends::all().await {
        let i = Install::new(&t);
        let adapter = arg(&component("csv_report"));
        i.ok(&["network", "add", "net", "--name", "Net", "--adapter", &adapter, "--config", CONFIG, "--auth", "none"]);
        let good = report();

        // One byte that is not UTF-8, in the last piece: refused before anything is recorded.
        let mut broken = good.clone().into_bytes();
        let at = broken.len() - 20;
        broken[at] = 0xff;
        let file = i.dir.path().join("broken.csv");
        std::fs::write(&file, broken).expect("file");
        let err = i.fails(&["import", "--network", "net", &arg(&file)]);
        assert!(err.contains("broken.csv: not UTF-8 (row 7001"), "{}: {err}", t.name);

        let file = i.dir.path().join("report.csv");
        std::fs::write(&file, &good).expect("file");
        let out = i.ok(&["import", "--network", "net", &arg(&file)]);
        let head = format!(
            "report.csv: {created} events: {created} created, 0 updated, 0 duplicate, 0 ignored, 0 rejected; \
             5 rows refused by the adapter"
        );
        assert!(out.contains(&head), "{}: nothing of the broken file was recorded: {out}", t.name);
        assert_eq!(refused_rows(&out), REFUSED.map(|(row, _)| row), "{}: {out}", t.name);
        for (row, why) in REFUSED {
            assert!(out.contains(&format!("row {row}: {why}")), "{}: row {row}: {out}", t.name);
        }

        let again = i.ok(&["import", "--network", "net", &arg(&file)]);
        let head = format!(
            "report.csv: {created} events: 0 created, 0 updated, {created} duplicate, 0 ignored, 0 rejected; \
             5 rows refused by the adapter"
        );
        assert!(again.contains(&head), "{}: {again}", t.name);
        assert_eq!(refused_rows(&again), REFUSED.map(|(row, _)| row), "{}: {again}", t.name);
        t.cleanup().await;
    }
}
