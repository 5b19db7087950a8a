//! `cashbackd plugin decision CONVERSION`: what the rule chain decided for one live
//! conversion — the plugin versions, the inputs they saw, each line's cashback and reason —
//! and what the ledger holds for it. How a plugin author watches a rule on real traffic.

use super::{Cli, fmt_time, with_service};
use anyhow::Context;
use cashback_sdk::money;
use serde_json::Value;
use std::process::ExitCode;

/// Prints the decision of conversion `id` (as a postback's answer names it), or its JSON.
pub fn run(cli: &Cli, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    with_service(cli, |service, _| async move {
        let c = service
            .conversion(id)
            .await?
            .with_context(|| format!("no conversion {id:?}: give the conversion_id a postback answered with"))?;
        let recorded: Value = c.decision.as_deref().map(serde_json::from_str).transpose()?.unwrap_or(Value::Null);
        if json {
            let doc = serde_json::json!({
                "conversion_id": c.id,
                "network": c.network_id,
                "transaction_id": c.transaction_id,
                "user": c.user_id,
                "state": c.state.as_str(),
                "status": c.status.as_str(),
                "status_reason": c.status_reason,
                "currency": c.currency,
                "amount": c.amount,
                "cashback": c.cashback,
                "ledger": { "pending": c.posted.pending, "available": c.posted.available },
                "rules": recorded,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return Ok(ExitCode::SUCCESS);
        }
        let cur = c.currency.as_str();
        let show = |minor: i64| money::format(minor, cur);
        println!("conversion  {}", c.id);
        println!(
            "network     {}, transaction {}{}",
            c.network_id,
            c.transaction_id,
            c.order_id.as_deref().map(|o| format!(", order {o}")).unwrap_or_default()
        );
        println!("user        {}", c.user_id.as_deref().unwrap_or("unknown"));
        let reason = c.status_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        println!("state       {}, status {}{reason}", c.state.as_str(), c.status.as_str());
        println!("order       {}", show(c.amount));
        println!("cashback    {}", show(c.cashback));
        println!("ledger      pending {}, available {}", show(c.posted.pending), show(c.posted.available));
        if recorded.is_null() {
            println!("rules       not run yet");
            return Ok(ExitCode::SUCCESS);
        }
        let refs = &recorded["plugins"];
        let split =
            |key: &str| refs[key].as_str().unwrap_or_default().split(',').map(str::to_string).collect::<Vec<_>>();
        let (names, versions, digests) = (split("names"), split("versions"), split("digests"));
        for (i, name) in names.iter().enumerate() {
            let digest = digests.get(i).map(String::as_str).unwrap_or_default();
            println!(
                "{:<12}{name}@{} ({})",
                if i == 0 { "rules" } else { "" },
                versions.get(i).map(String::as_str).unwrap_or("?"),
                &digest[..digest.len().min(19)]
            );
        }
        let inputs = &recorded["inputs"];
        if let (Some(prior), Some(now)) = (inputs["prior_orders"].as_u64(), inputs["now"].as_i64()) {
            println!("inputs      prior_orders {prior}, now {}", fmt_time(now));
        }
        let decision = &recorded["decision"];
        for line in decision["lines"].as_array().into_iter().flatten() {
            println!(
                "line        {}  {}  {}",
                line["line_id"].as_str().unwrap_or_default(),
                show(line["amount"].as_i64().unwrap_or_default()),
                line["reason"].as_str().unwrap_or_default()
            );
        }
        for e in decision["exclusions"].as_array().into_iter().flatten() {
            println!(
                "excluded    {}  {}",
                e["line_id"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default()
            );
        }
        for note in decision["notes"].as_array().into_iter().flatten() {
            println!("note        {}", note.as_str().unwrap_or_default());
        }
        if let Some(hold) = decision["hold"].as_str() {
            println!("hold        {hold}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
