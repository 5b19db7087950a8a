"""schemathesis hooks for the contract test (tests/it/contract.rs).

A client never sends one Idempotency-Key with two different bodies: the server refuses
that (422, `idempotency_key_reused`, per the IETF Idempotency-Key draft), and
tests/it/api.rs tests it. schemathesis draws keys from a small space and reuses them
across cases, so each schema-valid key gets a unique suffix: the request stays valid by
the document, and each case is the first use of its key. Invalid keys (negative cases)
are left alone.
"""

import re
import uuid

import schemathesis

KEY = re.compile(r"^[!-~]([ -~]*[!-~])?$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() != "idempotency-key":
            continue
        value = headers[name]
        if isinstance(value, str) and 1 <= len(value) <= 255 and KEY.match(value):
            headers[name] = value[:200] + "-" + uuid.uuid4().hex
