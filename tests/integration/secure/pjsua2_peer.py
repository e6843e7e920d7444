"""A pjsua2 (pjsip) user agent in its own process, for test_pjsua2.py.

Usage: ``pjsua2_peer.py PROXY_PORT USER DOMAIN PASSWORD OUT_DIR [TO CONTENT_TYPE BODY_FILE]``.
With the last three it sends one MESSAGE to TO (body and Content-Type as given, through
the proxy), prints ``sent STATUS`` and exits. Otherwise it registers
``sip:USER@DOMAIN`` at Kamailio on 127.0.0.1:PROXY_PORT over TCP, prints ``registered``,
waits for one MESSAGE and writes into OUT_DIR its Content-Type as pjsua2 reports it (type
and subtype only: pjsua2 drops the parameters, boundary included), its body, and the whole
message as received (``rdata.wholeMsg``, headers intact), then exits. The
body reaches Python as a ``str`` decoded from the raw octets with surrogate escapes (SWIG's
std::string), so ``encode("utf-8", "surrogateescape")`` gives back the exact octets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pjsua2 as pj


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.registered = False
        self.messages: list[tuple[str, str, str]] = []
        self.status = 0

    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802 - pjsua2's name
        self.registered = prm.code == 200

    def onInstantMessage(self, prm: pj.OnInstantMessageParam) -> None:  # noqa: N802
        self.messages.append((prm.contentType, prm.msgBody, prm.rdata.wholeMsg))

    def onInstantMessageStatus(self, prm: pj.OnInstantMessageStatusParam) -> None:  # noqa: N802
        self.status = prm.code


def main() -> int:
    port, user, domain, password, out = sys.argv[1:6]
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = 1
    config.logConfig.consoleLevel = 1
    endpoint.libInit(config)
    transport = pj.TransportConfig()
    transport.boundAddress = "127.0.0.1"
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_TCP, transport)
    endpoint.libStart()
    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:{user}@{domain}"
    account_config.regConfig.registrarUri = f"sip:127.0.0.1:{port};transport=tcp"
    account_config.sipConfig.proxies.append(f"sip:127.0.0.1:{port};transport=tcp;lr")
    account_config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
    account = Account()
    account.create(account_config)
    # Bounded by the test's timeout on this process; each round waits for network events.
    for _ in range(3000):
        endpoint.libHandleEvents(10)
        if account.registered:
            break
    print("registered" if account.registered else "not-registered", flush=True)
    if len(sys.argv) > 6:
        to, content_type, body_file = sys.argv[6:9]
        buddy_config = pj.BuddyConfig()
        buddy_config.uri = to
        buddy = pj.Buddy()
        buddy.create(account, buddy_config)
        message = pj.SendInstantMessageParam()
        message.contentType = content_type
        message.content = Path(body_file).read_text("ascii")  # base64 parts: ASCII only
        buddy.sendInstantMessage(message)
        for _ in range(3000):
            endpoint.libHandleEvents(10)
            if account.status >= 200:
                break
        print(f"sent {account.status}", flush=True)
        account.shutdown()
        endpoint.libDestroy()
        return 0 if account.status == 200 else 1
    for _ in range(3000):
        if account.messages:
            break
        endpoint.libHandleEvents(10)
    for _ in range(20):  # let the 200 go out
        endpoint.libHandleEvents(10)
    if account.messages:
        content_type, body, whole = account.messages[0]
        Path(out, "content-type").write_text(content_type)
        Path(out, "body").write_bytes(body.encode("utf-8", "surrogateescape"))
        Path(out, "message").write_bytes(whole.encode("utf-8", "surrogateescape"))
    account.shutdown()
    endpoint.libDestroy()
    return 0 if account.messages else 1


if __name__ == "__main__":
    raise SystemExit(main())
