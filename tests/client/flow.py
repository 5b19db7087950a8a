"""A whole flow through a client generated from cashbackd's OpenAPI document (issue 16,
point 3), run by tests/it/client.rs against a live `cashbackd serve` on an empty database.

Usage: flow.py GENERATED_PACKAGE_PARENT BASE_URL TOKEN RULE_WASM ADAPTER_WASM

Every admin call goes through the generated package `cashbackd_client` (openapi-python-client):
upload a rule and an adapter, create a network and a merchant, activate the rule, create a
user; the postback goes to the public ingress (not part of the admin API); then the parked
conversion is attributed to the user by hand, and the conversion and its timeline are read.
Every answer must parse into the generated client's model of its type.
Prints one JSON line with what it read; exits non-zero on any unexpected answer.
"""

import json
import sys
import urllib.request

sys.path.insert(0, sys.argv[1])
base, token, rule_wasm, adapter_wasm = sys.argv[2:6]

from cashbackd_client import AuthenticatedClient  # noqa: E402
from cashbackd_client.api.conversions import (  # noqa: E402
    get_apiv1conversions,
    get_apiv1conversionsid,
    post_apiv1conversionsidattribute,
)
from cashbackd_client.api.merchants import put_apiv1merchantsmerchant  # noqa: E402
from cashbackd_client.api.networks import put_apiv1networksnetwork  # noqa: E402
from cashbackd_client.api.plugins import (  # noqa: E402
    post_apiv1merchantsmerchantrulesactivate,
    post_apiv1plugins,
)
from cashbackd_client.api.users import put_apiv1usersuser  # noqa: E402
from cashbackd_client.models import (  # noqa: E402
    ActivateBody,
    AttributeBody,
    MerchantBody,
    NetworkBody,
    UserBody,
)
from cashbackd_client.types import File  # noqa: E402

client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)


def ok(response, *statuses):
    if response.status_code not in statuses:
        sys.exit(f"{response.status_code}: {response.content[:500]!r}")
    # Every answer is typed in the document: the client parsed this one into its generated
    # model (a body that did not fit the model would have raised), not a bare dict.
    if response.content and not hasattr(response.parsed, "to_dict"):
        sys.exit(f"{response.status_code}: no typed model for {response.content[:200]!r}: {response.parsed!r}")
    return json.loads(response.content) if response.content else None


def upload(path):
    with open(path, "rb") as f:
        r = post_apiv1plugins.sync_detailed(client=client, body=File(payload=f.read()))
    return ok(r, 200, 201)


rule = upload(rule_wasm)
adapter = upload(adapter_wasm)
network = NetworkBody.from_dict(
    {
        "name": "Net",
        "adapter": adapter["digest"],
        "adapter_config": {
            "params": {
                "transaction_id": "tid",
                "click_id": "clickref",
                "amount": "sale",
                "commission": "comm",
                "state": "status",
            },
            "states": {"pending": "PENDING"},
            "default_currency": "EUR",
        },
        "auth": "none",
    }
)
ok(put_apiv1networksnetwork.sync_detailed("net", client=client, body=network), 200)
merchant = MerchantBody.from_dict({"name": "Shop", "reward_delay_days": 0})
ok(put_apiv1merchantsmerchant.sync_detailed("shop", client=client, body=merchant), 200)
activate = ActivateBody.from_dict({"plugin": f"{rule['name']}@{rule['version']}"})
activated = ok(post_apiv1merchantsmerchantrulesactivate.sync_detailed("shop", client=client, body=activate), 200)
ok(put_apiv1usersuser.sync_detailed("alice", client=client, body=UserBody.from_dict({})), 200, 201)

# The network reports an order with a click cashbackd never saw: it is parked.
with urllib.request.urlopen(f"{base}/postback/net?tid=T-1&clickref=lost&sale=100.00&comm=8.00&status=pending") as r:
    assert r.status == 200, r.status

found = ok(get_apiv1conversions.sync_detailed(client=client, transaction="T-1"), 200)
conversion = found["conversions"][0]
assert conversion["status"] == "parked", conversion
attribute = AttributeBody.from_dict({"user_id": "alice", "merchant_id": "shop", "operator": "client-test"})
ok(post_apiv1conversionsidattribute.sync_detailed(conversion["id"], client=client, body=attribute), 200)
timeline = ok(get_apiv1conversionsid.sync_detailed(conversion["id"], client=client), 200)
print(json.dumps({"activated": activated, "conversion": timeline["conversion"], "stages": timeline["stages"],
                  "postings": timeline["postings"]}))
