//! User notifications over real SMTP (the sink in `smtp.rs`), on SQLite and PostgreSQL:
//! one digest per user per batch with amounts, a failed send retried and never sent
//! twice, the stage timestamp, and operator templates.

use crate::backends;
use crate::ledger::{World, event, world};
use crate::smtp::SmtpSink;
use cashbackd::conversions::{NewClick, conversion_id};
use cashbackd::notify::{self, Notifier, NotifyConfig};
use cashbackd::plugin::wit::latest::ConversionState;
use cashbackd::scheduler::{self, Scheduler};

const MINUTE: i64 = 60_000;

fn notifier(w: &World, smtp: &SmtpSink, templates: Option<std::path::PathBuf>) -> Notifier {
    let config = NotifyConfig {
        smtp_url: Some(smtp.url()),
        from: "Cashback <cashback@shop.test>".into(),
        templates_dir: templates,
        ..NotifyConfig::default()
    };
    Notifier::new(w.service.db().clone(), w.clock.clone(), config).expect("notifier")
}

/// u1 (click c1) and u2 (click c2) at `shop`; u3 has no e-mail address.
async fn users(w: &World) {
    for (user, email, click) in [("u2", Some("u2@example.com"), "c2"), ("u3", None, "c3")] {
        w.service.register_user(user, email).await.expect("user");
        w.service
            .register_click(NewClick {
                click_id: click.into(),
                user_id: user.into(),
                merchant_id: Some("shop".into()),
                network_id: Some("net".into()),
                ..Default::default()
            })
            .await
            .expect("click");
    }
}

async fn ingest(w: &World, tx: &str, click: &str, state: ConversionState, amount: i64) {
    let mut e = event(tx, state, amount, amount / 20);
    e.click_id = Some(click.into());
    w.service.ingest(e).await.expect("ingest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_digest_per_user_per_batch_lists_what_changed_with_amounts_over_smtp() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        users(&w).await;
        let smtp = SmtpSink::start().await;
        ingest(&w, "A", "c1", ConversionState::Pending, 10_000).await;
        ingest(&w, "A", "c1", ConversionState::Adjusted, 8_000).await;
        ingest(&w, "B", "c1", ConversionState::Completed, 5_000).await;
        ingest(&w, "C", "c2", ConversionState::Pending, 12_345).await;
        ingest(&w, "D", "c3", ConversionState::Pending, 1_000).await;
        ingest(&w, "E", "unknown-click", ConversionState::Pending, 1_000).await; // parked: nobody to tell yet
        w.clock.advance(MINUTE);

        let n = notifier(&w, &smtp, None);
        let s = n.run().await.expect("batch");
        assert_eq!((s.changes, s.users, s.sent, s.skipped, s.retrying), (5, 3, 2, 1, 0), "{}: {s:?}", t.name);
        let mails = smtp.accepted();
        assert_eq!(mails.len(), 2);
        let to_u1 = mails.iter().find(|m| m.to == vec!["<u1@example.com>".to_string()]).expect("u1's digest");
        assert_eq!(to_u1.from, "<cashback@shop.test>");
        let text = to_u1.data.replace("=\r\n", "").replace("\r\n", "\n");
        assert!(text.contains("Subject: Your cashback: 2 updates"), "{text}");
        assert!(text.contains("- Shop, order order-A: tracked, then adjusted. Cashback 8.00 EUR."), "{text}");
        assert!(text.contains("- Shop, order order-B: confirmed by the shop. Cashback 5.00 EUR."), "{text}");
        let to_u2 = mails.iter().find(|m| m.to == vec!["<u2@example.com>".to_string()]).expect("u2's digest");
        // 10 % of 123.45 EUR is 12.345 EUR; the rule rounds down (never more than the
        // rate), so 12.34 exactly. 12.35 would be a rounding bug.
        let cashback = 12_345 * 1_000 / 10_000;
        assert_eq!(cashback, 1_234);
        let expected = format!("Cashback {}.{:02} EUR", cashback / 100, cashback % 100);
        assert!(to_u2.data.contains(&expected), "{expected} in {}", to_u2.data);

        // The stage timestamp: when the user was told.
        let told = notify::notified_at(w.service.db(), &conversion_id("net", "A")).await.expect("read");
        assert_eq!(told, Some(w.service.now()));
        assert_eq!(notify::notified_at(w.service.db(), &conversion_id("net", "D")).await.expect("read"), None);

        // Nothing new: no batch, no e-mail. Something new: the next batch has it alone.
        let again = n.run().await.expect("batch");
        assert_eq!((again.batch_id, again.sent), (None, 0));
        ingest(&w, "A", "c1", ConversionState::Completed, 8_000).await;
        let next = n.run().await.expect("batch");
        assert_eq!((next.changes, next.users, next.sent), (1, 1, 1), "{next:?}");
        assert_eq!(smtp.accepted().len(), 3);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_retried_later_and_no_digest_is_ever_sent_twice() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        users(&w).await;
        let smtp = SmtpSink::start().await;
        ingest(&w, "A", "c1", ConversionState::Pending, 10_000).await;
        ingest(&w, "C", "c2", ConversionState::Pending, 2_000).await;
        let n = notifier(&w, &smtp, None);
        smtp.refuse_next(1);
        let s = n.run().await.expect("batch");
        assert_eq!((s.sent, s.retrying), (1, 1), "{}: {s:?}", t.name);
        assert_eq!((smtp.refused(), smtp.accepted().len()), (1, 1));
        // Not before its retry time (10 minutes after the first attempt).
        assert_eq!(n.run().await.expect("early").sent, 0);
        w.clock.advance(10 * MINUTE);
        let s = n.run().await.expect("retry");
        assert_eq!((s.sent, s.retrying), (1, 0), "{s:?}");
        let mut to: Vec<String> = smtp.accepted().iter().flat_map(|m| m.to.clone()).collect();
        to.sort();
        assert_eq!(to, vec!["<u1@example.com>", "<u2@example.com>"], "{}: one each", t.name);

        // A process that died after handing an e-mail to SMTP leaves it `sending`: it is
        // never resent (at most once), and counted for the operator.
        ingest(&w, "A", "c1", ConversionState::Completed, 10_000).await;
        let mut tx = w.service.db().pool.begin().await.expect("begin");
        sqlx::query("UPDATE conversion_changes SET notify_batch_id = -1 WHERE notify_batch_id IS NULL")
            .execute(&mut *tx)
            .await
            .expect("claim");
        sqlx::query("INSERT INTO notification_batches (id, created_at, changes, users) VALUES (-1, $1, 1, 1)")
            .bind(w.service.now())
            .execute(&mut *tx)
            .await
            .expect("batch");
        sqlx::query(
            "INSERT INTO notifications (batch_id, user_id, email, subject, body, state, attempts, next_attempt_at, created_at, sending_at) \
             VALUES (-1, 'u1', 'u1@example.com', 's', 'b', 'sending', 1, $1, $1, $1)",
        )
        .bind(w.service.now())
        .execute(&mut *tx)
        .await
        .expect("interrupted send");
        tx.commit().await.expect("commit");
        w.clock.advance(60 * MINUTE);
        let s = n.run().await.expect("after the crash");
        assert_eq!((s.sent, s.unknown), (0, 1), "{s:?}");
        assert_eq!(smtp.accepted().len(), 2, "nothing sent twice");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_notify_job_sends_digests_and_operator_templates_replace_the_built_in_ones() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let smtp = SmtpSink::start().await;
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("change.txt"), "* {{merchant}}: {{cashback}} ({{kind}}, order {{amount}})\n")
            .expect("write");
        ingest(&w, "A", "c1", ConversionState::Pending, 10_000).await;
        scheduler::ensure_system_jobs(&w.service).await.expect("system jobs");
        let s = Scheduler::new(w.service.clone(), crate::common::runtime().clone(), "r1").with_notifier(notifier(
            &w,
            &smtp,
            Some(dir.path().to_path_buf()),
        ));
        let run = s.run_now("notify").await.expect("run");
        assert_eq!(run.outcome, "ok", "{run:?}");
        assert_eq!(run.counts["sent"], 1, "{run:?}");
        let mail = &smtp.accepted()[0];
        assert!(mail.data.contains("* Shop: 10.00 EUR (tracked, order 100.00 EUR)"), "{}", mail.data);

        std::fs::write(dir.path().join("subject.txt"), "{{nope}}").expect("write");
        let config = NotifyConfig { templates_dir: Some(dir.path().to_path_buf()), ..NotifyConfig::default() };
        let err = Notifier::new(w.service.db().clone(), w.clock.clone(), config).expect_err("bad template");
        assert!(err.to_string().contains("subject.txt") && err.to_string().contains("{{nope}}"), "{err}");
        let jobs = scheduler::list(&w.service).await.expect("jobs");
        assert!(jobs.iter().any(|j| j.name == "notify" && j.schedule == "0 */4 * * *"), "{jobs:?}");
        assert!(jobs.iter().any(|j| j.name == "deliver"), "{jobs:?}");
        t.cleanup().await;
    }
}
