//! The dashboard overview's "today" queries use their indexes (issue 16, point 5): each
//! query's plan, on SQLite (`EXPLAIN QUERY PLAN`) and PostgreSQL (`EXPLAIN`, with
//! sequential scans priced out so that the planner shows the index it can use on a
//! small test table; on a large one it chooses it anyway), names the index. The plans are
//! written to `target/test-output/plans/`.

use crate::backends;
use crate::common::*;
use cashbackd::dashboard::queries;
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overviews_today_queries_are_served_by_indexes_on_both_backends() {
    let midnight = "1800000000000";
    let cases = [
        ("processed today", queries::PROCESSED_TODAY, "conversion_changes_processed_at"),
        ("reported today", queries::REPORTED_TODAY, "conversions_reported_at"),
        ("payouts requested today", queries::PAYOUTS_REQUESTED_TODAY, "payouts_requested"),
        ("payouts paid today", queries::PAYOUTS_PAID_TODAY, "payouts_status_paid"),
    ];
    let out = target_dir().join("test-output").join("plans");
    std::fs::create_dir_all(&out).expect("dir");
    for t in backends::all().await {
        let mut report = String::new();
        for (what, sql, index) in cases {
            let sql = sql.replace("$1", midnight);
            let plan: Vec<String> = if t.name == "sqlite" {
                sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(&t.db.pool)
                    .await
                    .expect("plan")
                    .iter()
                    .map(|r| r.get::<String, _>(3))
                    .collect()
            } else {
                let mut tx = t.db.pool.begin().await.expect("tx");
                sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.expect("set");
                let rows = sqlx::query(&format!("EXPLAIN {sql}")).fetch_all(&mut *tx).await.expect("plan");
                rows.iter().map(|r| r.get::<String, _>(0)).collect()
            };
            let plan = plan.join("\n");
            report.push_str(&format!("-- {what}\n{sql}\n{plan}\n\n"));
            assert!(plan.contains(index), "{}: {what} does not use {index}:\n{plan}", t.name);
        }
        std::fs::write(out.join(format!("overview-{}.txt", t.name)), report).expect("write");
        t.cleanup().await;
    }
}
