//! Dashboard sessions (issue 16, point 4): the cookie holds a random session id whose
//! hash is stored; a session carries its token's scope, expires, and is revoked by signing
//! out, by `cashbackd session revoke` (one session, or a token's), or with its token.

use crate::backends;
use crate::common::*;
use crate::public::Install;
use cashbackd::auth::{self, AuthError, Scope};
use sqlx::Row;

/// The storage, with explicit times: what is stored, the expiry to the millisecond,
/// revocation by id, by token, by signing out; both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stores_only_its_hash_carries_its_scope_expires_and_is_revocable() {
    for t in backends::all().await {
        let db = &t.db;
        let now = 1_800_000_000_000;
        let token = auth::create_token(db, "ops", Scope::Write, now, None).await.expect("token");
        let caller = auth::caller(db, &token, Scope::Read, now).await.expect("caller");
        let (secret, opened) = auth::open_session(db, &caller, now, 1_000).await.expect("open");
        assert_eq!(secret.len(), 64);
        let rows = sqlx::query("SELECT id, id_hash FROM dashboard_sessions").fetch_all(&db.pool).await.expect("rows");
        assert_eq!(rows.len(), 1);
        let (id, stored): (String, String) = (rows[0].get(0), rows[0].get(1));
        assert_eq!(id, opened.id);
        assert!(!stored.contains(&secret) && !id.contains(&secret), "{}: only a hash is stored", t.name);
        assert_eq!(stored, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes())));

        let s = auth::session(db, &secret, now + 999).await.expect("valid until its expiry");
        assert_eq!((s.caller.scope, s.caller.name.as_str()), (Scope::Write, "ops"), "{}", t.name);
        assert_eq!(auth::session(db, &secret, now + 1_000).await, Err(AuthError::Expired), "{}", t.name);
        assert_eq!(auth::session(db, &"0".repeat(64), now).await, Err(AuthError::Invalid));
        assert_eq!(auth::session(db, "short", now).await, Err(AuthError::Invalid));
        assert_eq!(auth::session(db, &token, now).await, Err(AuthError::Invalid), "a token is not a session");

        // Revoked by its id; the others stay.
        let (a, sa) = auth::open_session(db, &caller, now, 60_000).await.expect("open");
        let (b, _) = auth::open_session(db, &caller, now, 60_000).await.expect("open");
        let open = auth::open_sessions(db, now + 1_000).await.expect("list");
        assert_eq!(open.len(), 2, "{}: the expired one is not listed: {open:?}", t.name);
        assert_eq!(auth::revoke_sessions(db, &sa.id, now).await.expect("revoke"), 1);
        assert_eq!(auth::session(db, &a, now).await, Err(AuthError::Revoked));
        assert!(auth::session(db, &b, now).await.is_ok());
        // Signed out.
        assert!(auth::close_session(db, &b, now).await.expect("close"));
        assert!(!auth::close_session(db, &b, now).await.expect("close"), "once");
        assert_eq!(auth::session(db, &b, now).await, Err(AuthError::Revoked));
        // Every session of a token.
        let (c, _) = auth::open_session(db, &caller, now, 60_000).await.expect("open");
        let (d, _) = auth::open_session(db, &caller, now, 60_000).await.expect("open");
        // c, d, and the first (still open, if only because `now` is before its expiry).
        assert_eq!(auth::revoke_sessions(db, &caller.id, now).await.expect("revoke"), 3);
        for s in [&c, &d] {
            assert_eq!(auth::session(db, s, now).await, Err(AuthError::Revoked), "{}", t.name);
        }
        // Revoking the token ends its sessions; a read token's session is read.
        let (e, _) = auth::open_session(db, &caller, now, 60_000).await.expect("open");
        assert!(auth::revoke(db, &caller.id, now).await.expect("revoke token"));
        assert_eq!(auth::session(db, &e, now).await, Err(AuthError::Revoked));
        let reader = auth::create_token(db, "viewer", Scope::Read, now, Some(now + 500)).await.expect("token");
        let reader = auth::caller(db, &reader, Scope::Read, now).await.expect("caller");
        let (f, _) = auth::open_session(db, &reader, now, 60_000).await.expect("open");
        assert_eq!(auth::session(db, &f, now).await.expect("valid").caller.scope, Scope::Read);
        assert_eq!(auth::session(db, &f, now + 500).await, Err(AuthError::Expired), "its token's expiry applies");
        t.cleanup().await;
    }
}

/// From the outside: sign in to a running `cashbackd serve` through the login form, list
/// the session with the CLI, revoke it there (one, then a token's), and the cookie stops
/// working at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_and_revokes_dashboard_sessions_from_the_cli_and_the_cookie_stops_working() {
    for t in backends::all().await {
        let install = Install::new(&t);
        let token = install.ok(&["token", "create", "reviewer", "--scope", "write"]).trim().to_string();
        let server = install.serve("sessions", &[]);
        let base = server.base.clone();
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let page = |session: String| {
            let request = client
                .get(format!("{base}/dashboard/review"))
                .header(reqwest::header::COOKIE, format!("{}={session}", cashbackd::dashboard::COOKIE));
            async move {
                let r = request.send().await.expect("page");
                (r.status().as_u16(), r.headers().get("location").map(|v| v.to_str().unwrap_or("").to_string()))
            }
        };
        let first = dashboard_sign_in_http(&base, &token).await;
        let second = dashboard_sign_in_http(&base, &token).await;
        assert_eq!(page(first.clone()).await.0, 200, "{}", t.name);
        let listed = install.ok(&["session", "list"]);
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.len(), 2, "{listed}");
        assert!(lines.iter().all(|l| l.contains("(reviewer)") && l.contains("\twrite\t")), "{listed}");
        assert!(!listed.contains(&first) && !listed.contains(&token), "ids, never secrets: {listed}");
        let ids: Vec<&str> = lines.iter().map(|l| l.split('\t').next().expect("id")).collect();
        let token_id = lines[0].split('\t').nth(1).expect("token").split(' ').next().expect("tok_").to_string();
        assert!(token_id.starts_with("tok_"), "{listed}");

        // One session: the newest is listed first, so which of the two is which is found
        // by trying.
        install.ok(&["session", "revoke", ids[0]]);
        let states = [page(first.clone()).await, page(second.clone()).await];
        assert_eq!(states.iter().filter(|(s, _)| *s == 200).count(), 1, "{}: one left: {states:?}", t.name);
        let (status, location) = states.iter().find(|(s, _)| *s != 200).expect("revoked").clone();
        assert_eq!(status, 303);
        assert!(location.as_deref().is_some_and(|l| l.ends_with("why=revoked")), "{location:?}");
        assert!(install.fails(&["session", "revoke", ids[0]]).contains("no open session"));
        assert!(install.fails(&["session", "revoke", "x"]).contains("ses_"));
        // Every session of the token, however many.
        let third = dashboard_sign_in_http(&base, &token).await;
        assert!(install.ok(&["session", "revoke", &token_id]).starts_with("2 session(s)"), "{}", t.name);
        for s in [&first, &second, &third] {
            assert_eq!(page(s.to_string()).await.0, 303, "{}", t.name);
        }
        // Revoking the token signs out a session opened after the last revoke.
        let fourth = dashboard_sign_in_http(&base, &token).await;
        assert_eq!(page(fourth.clone()).await.0, 200);
        install.ok(&["token", "revoke", &token_id]);
        assert_eq!(page(fourth).await.0, 303, "{}", t.name);
        assert_eq!(install.ok(&["session", "list"]).trim(), "", "nothing open");
        drop(server);
        t.cleanup().await;
    }
}
