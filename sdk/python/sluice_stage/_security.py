"""TLS and bearer tokens for a stage served over TCP (docs/protocol.md,
section 1), from the same environment variables the Rust and Go SDKs read.

``SLUICE_STAGE_TLS_CERT`` and ``SLUICE_STAGE_TLS_KEY`` (PEM) make the stage
serve TLS; ``SLUICE_STAGE_TLS_CLIENT_CA`` makes it mutual (a client must
present a certificate that CA signed); ``SLUICE_STAGE_TOKEN`` makes every
call carry ``authorization: Bearer <token>`` or fail ``UNAUTHENTICATED``.
The token never appears in a message or a log.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import pyarrow.flight as flight

ENV_TLS_CERT = "SLUICE_STAGE_TLS_CERT"
ENV_TLS_KEY = "SLUICE_STAGE_TLS_KEY"
ENV_TLS_CLIENT_CA = "SLUICE_STAGE_TLS_CLIENT_CA"
ENV_TOKEN = "SLUICE_STAGE_TOKEN"

# the refusals, as the Rust and Go SDKs word them
MSG_NO_TOKEN = 'no token: this stage requires "authorization: Bearer <token>" (the pipeline\'s token)'
MSG_WRONG_TOKEN = "wrong token"

# what a gRPC header value may hold: visible ASCII, spaces and tabs
_HEADER_SAFE = re.compile(r"[\t\x20-\x7e]+")

# the PEM blocks each variable wants: certificates; an unencrypted private
# key (PKCS #8, RSA or EC), not a certificate request or an encrypted key
_CERTIFICATE = re.compile(rb"^-----BEGIN CERTIFICATE-----\r?$", re.MULTILINE)
_PRIVATE_KEY = re.compile(rb"^-----BEGIN (?:RSA |EC )?PRIVATE KEY-----\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Security:
    """What a stage asks of its clients. Empty: plain gRPC, no token."""

    cert: Optional[bytes] = None
    key: Optional[bytes] = None
    client_ca: Optional[bytes] = None
    token: Optional[bytes] = None

    @property
    def tls(self) -> bool:
        return self.cert is not None

    def server_options(self) -> dict:
        """Keyword arguments of ``pyarrow.flight.FlightServerBase``."""
        options: dict = {}
        if self.cert is not None and self.key is not None:
            options["tls_certificates"] = [flight.CertKeyPair(self.cert, self.key)]
            if self.client_ca is not None:
                options["verify_client"] = True
                options["root_certificates"] = self.client_ca
        if self.token is not None:
            options["middleware"] = {"sluice-token": TokenCheck(self.token)}
        return options

    def __repr__(self) -> str:
        # never the token, nor the key
        return f"Security(tls={self.tls}, mutual={self.client_ca is not None}, token={self.token is not None})"


def _pem(path: str, variable: str, block: "re.Pattern[bytes]", what: str, begins: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f'{variable} = "{path}": {e.strerror or e}') from None
    if not block.search(data):
        raise ValueError(f'{variable} = "{path}": no {what} in the file (a `-----BEGIN {begins}-----` block)')
    return data


def security_from_env(environ: Optional[Mapping[str, str]] = None) -> Security:
    """The stage's security from its environment. Raises ValueError, naming
    the variable, when the variables do not go together or a file is not
    what its variable wants."""
    env = os.environ if environ is None else environ

    def var(name: str) -> Optional[str]:
        return env.get(name) or None  # empty is unset, as in Rust and Go

    cert, key, ca = var(ENV_TLS_CERT), var(ENV_TLS_KEY), var(ENV_TLS_CLIENT_CA)
    if ca is not None and (cert is None or key is None):
        raise ValueError(f"{ENV_TLS_CLIENT_CA} needs {ENV_TLS_CERT} and {ENV_TLS_KEY} (mutual TLS is TLS first)")
    if (cert is None) != (key is None):
        raise ValueError(f"{ENV_TLS_CERT} and {ENV_TLS_KEY} go together")
    token = var(ENV_TOKEN)
    if token is not None and not _HEADER_SAFE.fullmatch(token):
        raise ValueError(f"${ENV_TOKEN} holds characters a gRPC header cannot carry")
    return Security(
        cert=_pem(cert, ENV_TLS_CERT, _CERTIFICATE, "certificate", "CERTIFICATE") if cert else None,
        key=_pem(key, ENV_TLS_KEY, _PRIVATE_KEY, "unencrypted private key", "PRIVATE KEY") if key else None,
        client_ca=_pem(ca, ENV_TLS_CLIENT_CA, _CERTIFICATE, "certificate", "CERTIFICATE") if ca else None,
        token=token.encode() if token is not None else None,
    )


class TokenCheck(flight.ServerMiddlewareFactory):
    """Refuses every call (``DoAction``, ``DoExchange``, all) that does not
    carry the token, with ``UNAUTHENTICATED``. Tokens are compared in time
    that does not depend on where the first wrong byte is."""

    def __init__(self, token: bytes):
        super().__init__()
        self._want = b"Bearer " + token

    def start_call(self, info: Any, headers: Mapping[str, Any]) -> None:
        given = headers.get("authorization") or []
        if not given:
            raise flight.FlightUnauthenticatedError(MSG_NO_TOKEN)
        value = given[0]
        value = value.encode("latin-1", "replace") if isinstance(value, str) else bytes(value)
        if not hmac.compare_digest(value, self._want):
            raise flight.FlightUnauthenticatedError(MSG_WRONG_TOKEN)
        return None
