#!/usr/bin/env python3
"""Writes the hand-made part of the seed corpora (fuzz/corpus/<target>/seed-*) from the
repository's fixtures and documentation. Each seed is the `#` text form its target reads
(see the target's header comment). Run from anywhere; rewrites only `seed-*` files, so the
corpus entries the fuzzer found and `cargo fuzz cmin` kept stay as they are.

    python3 fuzz/make_seeds.py
"""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def fixtures(plugin):
    return json.loads((ROOT / "plugins" / plugin / "fixtures.json").read_text())


def write(target, seeds):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for i, seed in enumerate(seeds):
        data = seed if isinstance(seed, bytes) else seed.encode()
        (folder / f"seed-{i:02}").write_bytes(b"#" + data)
    print(f"{target}: {len(seeds)} seeds")


def one_line(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_import():
    return [one_line(c["config"]) + "\n" + c["file"]["contents"] for c in fixtures("csv-report")]


def postbacks():
    """(config, method line, query, body) of generic-s2s's fixtures."""
    out = []
    for c in fixtures("generic-s2s"):
        p = c["postback"]
        method = p.get("method", "GET")
        headers = dict((k.lower(), v) for k, v in p.get("headers", []))
        if method == "POST":
            method = ("POST " + headers.get("content-type", "")).strip()
        out.append((c["config"], method, p.get("query", ""), p.get("body", "")))
    return out


def generic_s2s():
    return [f"{one_line(config)}\n{method}\n{query}\n{body}" for config, method, query, body in postbacks()]


def postback():
    seeds = []
    for _, _, query, body in postbacks():
        seeds.append(f"s3cret\n{query}\n{body}")
        seeds.append(f"s3cret\n{query}&token=s3cret\n{body}")
        seeds.append(f"s3cret\ntok%65n=s3cret&{query}&signature=00ff\n{body}")
    return seeds


def templates_in_docs(pattern):
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for t in re.findall(r"'(https?://[^' ]+)'", doc.read_text()):
            if re.search(pattern, t) and t not in found:
                found.append(t)
    return found


def click_url():
    values = "c0ffee0123456789abcdef0123456789\np/1\na b&c=d?e\n%41 already\nünï €\n{sub1}\n"
    templates = templates_in_docs(r"\{(click_id|ref_id|sub[1-5])\}") + [
        "https://shop.example/p?cid={click_id}&s1={sub1}&s2={sub2}&s3={sub3}&s4={sub4}&r={ref_id}",
        "https://shop.example/{sub1}/p?x={sub5}#{click_id}",
        "https://shop.example/p?s={sub{ref_id}}",
    ]
    return [t + "\n" + values for t in templates]


def callback_template():
    return templates_in_docs(r"\{[a-z_:]+\}|\[%") + [
        "https://p.example/cb?s=[%CASHBACK:STATE%]&c={click_id}&r={raw:click_id}&s1={sub1}"
        "&why=[%CASHBACK:REASON%]&w=[%RAW:CASHBACK:REASON%]&n={ref_id}",
        "https://p.example/cb?x={clickid}",
        "https://p.example/cb?x={raw:clickid}&y=[%RAW:CASHBACK:STATUS%]",
        "https://p.example/cb?x=[%CASHBACK:STATUS%]",
        "https://p.example/cb?x={click_id",
        "https://p.example/cb?x=[%CASHBACK:STATE",
    ]


def config():
    defaults = (ROOT / "host" / "config" / "cashbackd.toml").read_text()
    return [
        defaults,
        "[callbacks]\nmax_attempts = 0\n",
        '[callbacks]\nmax_attempts = "x"\n',
        "[callbacks]\nmax_atempts = 3\n",
        '[database]\nurl = "mysql://user:pw0SECRET0pw@db/x"\n',
        '[smtp]\nurl = "smtp://user:pw0SECRET0pw@mail.example:587"\nfrom = "a <b@c>"\n',
        '[database]\nurl = "postgres:://user:pw0SECRET0pw@db/x"\n',
        "[plugin.defaults]\ndeadline_ms = 999999999\n",
        "[plugin.overrides.flat-rate]\ndeadline_ms = 5\n",
        '[notify]\nschedule = "every day"\n',
        "[http]\nlisten = 8080\n",
        "not toml at all [",
    ]


def money(minor, currency):
    return {"minor": minor, "currency": currency}


def wit_boundary():
    seeds = []
    events = [e for c in fixtures("generic-s2s") if isinstance(c.get("expect"), list) for e in c["expect"]]
    for plugin in ["flat-rate", "rate-table"]:
        for i, c in enumerate(fixtures(plugin)):
            expect = c.get("expect")
            if not isinstance(expect, dict) or "total" not in expect:
                continue
            order = c["order"]
            total = dict(expect["total"])
            total.setdefault("currency", order["amount"]["currency"])
            lines = expect.get("lines")
            if lines is None:
                # A fixture that checks only the total: one line carries it.
                lines = [{"line_id": order["line_items"][0]["id"], "amount": total["minor"]}] if total["minor"] else []
            decision = {
                "lines": lines,
                "exclusions": expect.get("exclusions", []),
                "total": total,
                "hold": expect.get("hold"),
                "reward_delay_days": expect.get("reward_delay_days"),
                "notes": expect.get("notes", []),
            }
            for line in decision["lines"]:
                line.setdefault("rate_bps", None)
                line.setdefault("reason", "")
            for x in decision["exclusions"]:
                x.setdefault("reason", "")
            e = dict(events[i % len(events)]) if events else {}
            event = {
                "network": "awin",
                "transaction_id": e.get("transaction_id", "T-1"),
                "click_id": e.get("click_id"),
                "order_id": e.get("order_id"),
                "event_type": e.get("event_type", "sale"),
                "state": order["state"],
                "amount": order["amount"]["minor"],
                "commission": order["commission"]["minor"],
                "currency": order["amount"]["currency"],
                "event_time": order["event_time"],
                "reason": e.get("reason"),
                "merchant_ref": e.get("merchant_ref"),
                "line_items": order["line_items"],
                "raw": e.get("raw", []),
            }
            seeds.append(one_line({"order": order, "decision": decision, "event": event}))
    return seeds


if __name__ == "__main__":
    write("csv_import", csv_import())
    write("generic_s2s", generic_s2s())
    write("postback", postback())
    write("click_url", click_url())
    write("callback_template", callback_template())
    write("config", config())
    write("wit_boundary", wit_boundary())
