"""The one error hierarchy of sipcert.

Every failure that sipcert reports is a :class:`SipCertError`. Low-level exceptions
(``ValueError`` from a parser, ``asn1crypto`` or ``cryptography`` errors, ``OSError``) are
caught where they happen and re-raised as one of these with ``raise ... from exc``, so callers
and the CLI need to handle exactly one tree. Each class carries a hint for the HTTP status a
server should answer with and for the CLI exit code, so that mapping lives in one place.

    SipCertError
    ├── InputError                     malformed input (400)
    │   ├── InputTooLargeError         input over a size limit (413)
    │   │   ├── HeaderTooLargeError    a request head or header over its limit (431)
    │   │   └── URITooLongError        a request target over its limit (414)
    │   ├── UnsupportedMediaTypeError  an upload that is not a certificate type (415)
    │   ├── AORError                   not an address of record / SIP URI
    │   ├── CertificateParseError      DER/PEM that is not a certificate
    │   ├── DigestHeaderError          a malformed WWW-Authenticate / Authorization header
    │   ├── MIMEError                  a malformed MIME entity or multipart body
    │   ├── SipMessageError            a framed SIP message that is not valid (400)
    │   │   ├── SipVersionError        a SIP version other than 2.0 (505)
    │   │   └── SipFramingError        a stream message without a usable Content-Length
    │   ├── CMSError                   a malformed CMS (PKCS#7) structure
    │   ├── ProxyProtocolError         a malformed or unexpected PROXY protocol header
    │   └── LogFormatError             a malformed signed note, checkpoint, tile or proof
    ├── AuthenticationError            Digest credentials missing or wrong (401)
    │   └── StaleNonceError            a genuine nonce that has expired (401, stale=true)
    ├── ForbiddenError                 authenticated but not allowed (403)
    ├── RateLimitedError               too many failed attempts; retry later (429)
    ├── NotFoundError                  nothing there (404)
    ├── CryptoError                    a cryptographic operation failed
    │   ├── SignatureError             a signature does not verify
    │   ├── DecryptionError            no usable recipient, or decryption failed
    │   │   └── NotRecipientError      no RecipientInfo names our certificate
    │   └── ProofError                 a transparency-log proof does not verify
    │       └── ForkError              two views of one log are inconsistent (split view)
    ├── NameMismatchError              a TLS server name does not match the AOR domain (draft §4.3)
    ├── LocationError                  the Store could not be located (DNS)
    ├── TransportError                 a network or TLS failure
    │   └── TLSHandshakeError          the TLS handshake failed
    │       └── UntrustedCertificateError  the server's chain does not verify
    ├── StoreResponseError             the Store answered with an unexpected status
    │   └── StoreUnavailableError      the Store answered 503: its database failed
    ├── StorageError                   the database failed
    └── ConfigError                    bad configuration or command-line usage
"""

from __future__ import annotations

__all__ = [
    "AORError",
    "AuthenticationError",
    "CMSError",
    "CertificateParseError",
    "ConfigError",
    "CryptoError",
    "DecryptionError",
    "DigestHeaderError",
    "ForbiddenError",
    "ForkError",
    "HeaderTooLargeError",
    "InputError",
    "InputTooLargeError",
    "LocationError",
    "LogFormatError",
    "MIMEError",
    "NameMismatchError",
    "NotFoundError",
    "NotRecipientError",
    "ProofError",
    "ProxyProtocolError",
    "RateLimitedError",
    "SignatureError",
    "SipCertError",
    "SipFramingError",
    "SipMessageError",
    "SipVersionError",
    "StaleNonceError",
    "StorageError",
    "StoreResponseError",
    "StoreUnavailableError",
    "TLSHandshakeError",
    "TransportError",
    "URITooLongError",
    "UnsupportedMediaTypeError",
    "UntrustedCertificateError",
]


class SipCertError(Exception):
    """Base of every error sipcert raises; ``str(err)`` is one line fit for a user."""

    #: HTTP status a server answers with when this error ends a request.
    http_status: int = 500
    #: Exit code of the CLI when this error ends a command (documented in README.md).
    exit_code: int = 10


class InputError(SipCertError):
    """Input that does not parse: the peer or the user sent something malformed."""

    http_status = 400
    exit_code = 4


class InputTooLargeError(InputError):
    """Input larger than the limit that applies to it."""

    http_status = 413


class HeaderTooLargeError(InputTooLargeError):
    """A request head, or one header in it, over its limit (RFC 6585 §5)."""

    http_status = 431


class URITooLongError(InputTooLargeError):
    """A request target longer than the Store parses (RFC 9112 §3: 414, not 413)."""

    http_status = 414


class UnsupportedMediaTypeError(InputError):
    """An upload whose Content-Type is not a certificate type."""

    http_status = 415


class AORError(InputError):
    """Text that is not an address of record (``user@host``) or an AOR-shaped URI."""


class CertificateParseError(InputError):
    """Bytes that are not one well-formed X.509 certificate (DER or PEM)."""


class DigestHeaderError(InputError):
    """A Digest ``WWW-Authenticate`` or ``Authorization`` header that does not parse."""


class MIMEError(InputError):
    """A MIME entity or multipart body that does not parse."""


class SipMessageError(InputError):
    """A SIP message whose boundaries are known but whose content is invalid.

    ``head`` holds the raw header section as received, so a UAS can still copy Via, From,
    To, Call-ID and CSeq into its error response (RFC 3261 §8.2.6) when the message itself
    cannot be built.
    """

    def __init__(self, message: str, *, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head


class SipVersionError(SipMessageError):
    """A request in a SIP version other than 2.0 (RFC 3261 §8.2.6 / §21.5.7: 505)."""

    http_status = 505


class SipFramingError(SipMessageError):
    """A stream message without a usable Content-Length: the framing is lost (§18.3)."""


class CMSError(InputError):
    """A CMS (PKCS#7) structure that does not parse or is not of the expected type."""


class ProxyProtocolError(InputError):
    """A PROXY protocol header (haproxy doc/proxy-protocol.txt) that is malformed, missing
    from a trusted balancer, or sent by a source that is not trusted to send one."""


class LogFormatError(InputError):
    """A signed note, checkpoint, tile, entry or proof that does not parse (C2SP formats)."""


class AuthenticationError(SipCertError):
    """Digest authentication failed; unknown user and wrong password look the same."""

    http_status = 401
    exit_code = 6


class StaleNonceError(AuthenticationError):
    """The nonce was ours but has expired: the client should retry with a fresh one."""


class ForbiddenError(SipCertError):
    """Authenticated, but the request is not allowed (e.g. a SAN URI of another user).

    ``reason`` is a short machine-readable code (``san-user-mismatch``, ``expired``, ...)
    that a server puts in its answer and tests assert on.
    """

    http_status = 403
    exit_code = 7

    def __init__(self, message: str, reason: str = "forbidden") -> None:
        super().__init__(message)
        self.reason = reason


class RateLimitedError(SipCertError):
    """Too many failed attempts from this client or for this user; retry later."""

    http_status = 429
    exit_code = 14

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFoundError(SipCertError):
    """The thing asked for does not exist."""

    http_status = 404
    exit_code = 1


class CryptoError(SipCertError):
    """A cryptographic operation failed."""

    exit_code = 8


class SignatureError(CryptoError):
    """A signature (CMS or certificate self-signature) does not verify."""


class DecryptionError(CryptoError):
    """An enveloped message could not be decrypted with the keys we hold."""


class NotRecipientError(DecryptionError):
    """No RecipientInfo of an envelope names our certificate (draft §4.5): not for us."""


class ProofError(CryptoError):
    """A transparency-log proof or checkpoint signature does not verify (docs/transparency.md)."""


class ForkError(ProofError):
    """Two checkpoints of one log cannot both be true: the log showed a split view.

    Its own exit code, because it is evidence against the Store, not a transient failure.
    """

    exit_code = 15


class NameMismatchError(SipCertError):
    """The TLS server certificate does not name the AOR's domain exactly (draft §4.3)."""

    exit_code = 5

    def __init__(self, expected: str, presented: list[str], *, context: str = "") -> None:
        shown = f"names {', '.join(presented)}" if presented else "presents no DNS name"
        super().__init__(
            f"server certificate {shown}, not the AOR domain {expected!r} (draft §4.3){context}"
        )
        self.expected = expected
        self.presented = presented


class LocationError(SipCertError):
    """The certificate Store could not be located (DNS failure, no usable target)."""

    exit_code = 3


class TransportError(SipCertError):
    """Connecting to or talking with a peer failed (refused, timed out, TLS failure)."""

    exit_code = 9


class TLSHandshakeError(TransportError):
    """The TLS handshake failed (protocol version, alert, reset)."""


class UntrustedCertificateError(TLSHandshakeError):
    """The server's certificate chain does not verify against the trusted CAs (draft §7.1)."""

    exit_code = 13


class StoreResponseError(SipCertError):
    """The Store answered with a status the operation did not expect."""

    exit_code = 11

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"store answered {status}: {reason}")
        self.status = status
        self.reason = reason


class StoreUnavailableError(StoreResponseError):
    """The Store answered 503: what our Store answers when its database fails
    (:class:`StorageError`), so the client exits with the same code, 12, for any request."""

    exit_code = 12

    def __init__(self, status: int, reason: str) -> None:
        SipCertError.__init__(
            self, f"the Store is unavailable (it answered {status}: {reason}); try again later"
        )
        self.status = status
        self.reason = reason


class StorageError(SipCertError):
    """The certificate database failed; the write, if any, did not happen."""

    http_status = 503
    exit_code = 12


class ConfigError(SipCertError):
    """Bad configuration or command-line usage."""

    exit_code = 2
