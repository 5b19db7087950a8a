"""A real SMTP server for the digest tests: aiosmtpd (PyPI) with AUTH, and TLS the way
production mail servers offer it.

    python3 tests/smtp/server.py --tls starttls|implicit|none --user U --password P \
        --cert cert.pem --key key.pem --out mails.jsonl

Prints "PORT <n>" once it accepts connections, then runs until killed. Every accepted
message is appended to --out as one JSON line: envelope, data, the login that sent it and
whether the session was encrypted; a test asserts on those, not on what the client thinks
it did.

  starttls  plain connection, STARTTLS offered and required before AUTH and MAIL
            (smtp://user:pass@host:port?tls=required)
  implicit  TLS from the first byte (smtps://user:pass@host:port)
  none      no TLS at all, AUTH in clear (smtp://user:pass@host:port)
"""
import argparse
import json
import socket
import ssl
import sys
import time
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    def __init__(self, out, mode):
        self.out = out
        self.mode = mode

    async def handle_DATA(self, server, session, envelope):
        encrypted = self.mode == "implicit" or session.ssl is not None
        login = None
        if isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "login": login,
            "tls": encrypted,
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 OK"


def main():
    # "AUTH without TLS" is the point of --tls none; the warning would only be noise.
    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--tls", choices=["starttls", "implicit", "none"], required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == a.user
            and auth_data.password.decode() == a.password
        )
        # The session keeps auth_data only if the authenticator hands it back; a failure
        # must say handled=False, or aiosmtpd leaves the client waiting for an answer
        # instead of replying 535.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    ctx = None
    if a.tls != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
    kwargs = dict(
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticate,
        auth_required=True,
        server_hostname="localhost",
    )
    if a.tls == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    elif a.tls == "implicit":
        # Under implicit TLS aiosmtpd does not count the session as "STARTTLS-secured",
        # so AUTH must be allowed without it: the whole connection is encrypted anyway.
        kwargs.update(ssl_context=ctx, auth_require_tls=False)
    else:
        kwargs.update(auth_require_tls=False)
    controller = Controller(Sink(a.out, a.tls), **kwargs)
    controller.start()
    print(f"PORT {controller.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
