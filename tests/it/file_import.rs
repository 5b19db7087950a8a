//! A report file larger than several of the pieces the host hands `csv-report` (issue 14
//! point 5), imported through the CLI into a fresh database on each backend: quoted line
//! breaks and a blank row do not shift the row numbers, bad rows on either side of a
//! piece boundary and a transaction repeated in a later piece are reported on their true
//! rows, a file with a byte that is not UTF-8 records nothing, and importing the same file
//! again changes nothing. And the same through `/api/v1`: an uploaded report streamed to
//! disk as it arrives, capped by `http.max_import_bytes`, every row credited.

use crate::backends;
use crate::public::{Client, Install, arg, balance, component};
use std::io::{Read, Write};

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

/// Shoppers of the uploaded report, each with as many of its rows.
const SHOPPERS: usize = 4;
/// Rows of the uploaded report: three pieces.
const UPLOAD_ROWS: usize = 5_000;
/// What each row credits: flat-rate at 8 % of a 100.00 sale.
const CASHBACK: i64 = 800;

/// `POST path` with `body` sent chunked (no `Content-Length`: the server can only count),
/// over a plain connection; the answer's status line and body. The body is sent without
/// its final empty chunk, so the server has read every byte sent when it answers, and
/// closes without a reset that could swallow the answer.
fn post_chunked(base: &str, path: &str, token: &str, body: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/csv\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).expect("head");
    for chunk in body.chunks(16 << 10) {
        conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).expect("chunk size");
        conn.write_all(chunk).expect("chunk");
        conn.write_all(b"\r\n").expect("chunk end");
    }
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer");
    answer
}

/// Through `/api/v1` (issue 14 point 5): a report of several pieces uploaded to a live
/// `cashbackd serve`, which writes the body to a temporary file as it arrives and imports
/// that file a piece at a time. A body over `http.max_import_bytes` is refused with 413
/// naming the setting, whether it declares its length or is only counted as it comes, and
/// records nothing; the report within the cap credits every row to its shopper, and the
/// same upload again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_report_is_streamed_to_disk_and_imported_in_pieces_crediting_every_row() {
    for t in backends::all().await {
        let i = Install::new(&t);
        i.ok(&["plugin", "upload", &arg(&component("flat_rate"))]);
        i.ok(&["merchant", "add", "shop", "--name", "Shop", "--reward-delay-days", "0"]);
        i.ok(&["plugin", "activate", "flat-rate@0.1.0", "--merchant", "shop", "--config", r#"{"rate_bps": 800}"#]);
        let config = r#"{"columns": {"transaction_id": "tx", "click_id": "click", "amount": "sale",
            "commission": "comm", "state": "status", "event_time": "date"},
            "states": {"pending": "PENDING"}, "default_currency": "EUR"}"#;
        let adapter = arg(&component("csv_report"));
        i.ok(&["network", "add", "csv", "--name", "CSV", "--adapter", &adapter, "--config", config, "--auth", "none"]);
        i.ok(&[
            "link",
            "add",
            "sale",
            "--merchant",
            "shop",
            "--network",
            "csv",
            "--url",
            "https://shop.example/?ref={click_id}",
        ]);

        // The shoppers' clicks, then the report of their orders; the server that takes it
        // is started with the report's size as its cap.
        let token = i.admin_token();
        let mut clicks = Vec::new();
        {
            let s = i.serve("clicks", &[]);
            let c = Client::new(&s.base, &token);
            for u in 0..SHOPPERS {
                clicks.push(c.click(&format!("/c/sale?user=shopper-{u}"), "ref").await);
            }
        }
        let mut report = String::from("tx,click,sale,comm,status,date\n");
        for k in 0..UPLOAD_ROWS {
            report.push_str(&format!("T{k:06},{},100.00,8.00,pending,2026-01-01\n", clicks[k % SHOPPERS]));
        }
        let size = report.len();
        let s = i.serve("serve", &[("CASHBACKD_HTTP_MAX_IMPORT_BYTES", &size.to_string())]);
        let c = Client::new(&s.base, &token);
        let path = "/api/v1/networks/csv/imports?name=report.csv";

        // One byte over the cap: refused, by the declared length or by the count.
        let over = format!("{report}T999999,{},100.00,8.00,pending,2026-01-01\n", clicks[0]);
        let r = c.http.post(format!("{}{path}", s.base)).bearer_auth(&c.token).body(over.clone()).send().await;
        let r = r.expect("upload");
        assert_eq!(r.status().as_u16(), 413, "{}", t.name);
        let body = r.text().await.unwrap_or_default();
        assert!(body.contains(&format!("over {size} bytes")) && body.contains("http.max_import_bytes"), "{body}");
        let (base, token) = (s.base.clone(), c.token.clone());
        let answer = tokio::task::spawn_blocking(move || post_chunked(&base, path, &token, over.as_bytes()))
            .await
            .expect("chunked upload");
        assert!(answer.starts_with("HTTP/1.1 413"), "{}: {answer}", t.name);
        assert!(answer.contains("http.max_import_bytes"), "{answer}");
        let found = c.expect(200, "GET", "/api/v1/conversions?transaction=T000000", None).await;
        assert_eq!(found["conversions"].as_array().map(Vec::len), Some(0), "{}: nothing recorded: {found}", t.name);

        // Within the cap: every row, in three pieces, credited to its shopper.
        for again in [false, true] {
            let r = c.http.post(format!("{}{path}", s.base)).bearer_auth(&c.token).body(report.clone()).send().await;
            let r = r.expect("upload");
            assert_eq!(r.status().as_u16(), 200, "{}", t.name);
            let summary: serde_json::Value = serde_json::from_str(&r.text().await.expect("body")).expect("summary");
            let (created, duplicates) = if again { (0, UPLOAD_ROWS) } else { (UPLOAD_ROWS, 0) };
            assert_eq!(summary["events"], UPLOAD_ROWS, "{}: {summary}", t.name);
            assert_eq!(summary["tally"]["created"], created, "{}: {summary}", t.name);
            assert_eq!(summary["tally"]["duplicates"], duplicates, "{}: {summary}", t.name);
            assert_eq!(summary["rejected_rows"], serde_json::json!([]), "{}: {summary}", t.name);
            for u in 0..SHOPPERS {
                let user = c.expect(200, "GET", &format!("/api/v1/users/shopper-{u}"), None).await;
                let rows = (UPLOAD_ROWS / SHOPPERS) as i64;
                assert_eq!(balance(&user, "EUR", "pending"), rows * CASHBACK, "{}: shopper-{u}: {user}", t.name);
            }
        }
        // The last row, from the third piece, is a conversion the API shows.
        let last = format!("/api/v1/conversions?transaction=T{:06}", UPLOAD_ROWS - 1);
        let found = c.expect(200, "GET", &last, None).await;
        let conversion = &found["conversions"][0];
        assert_eq!(conversion["state"], "PENDING", "{}: {found}", t.name);
        assert_eq!(conversion["user_id"], format!("shopper-{}", (UPLOAD_ROWS - 1) % SHOPPERS), "{found}");
        drop(s);
        t.cleanup().await;
    }
}
