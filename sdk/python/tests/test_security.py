"""TLS and tokens (docs/protocol.md, section 1): a stage served on TCP with
SLUICE_STAGE_TLS_CERT/_KEY/_CLIENT_CA and SLUICE_STAGE_TOKEN refuses what
the Rust and Go SDKs refuse. Certificates are made here (cryptography)."""

import datetime
import importlib.util
import os
import random
import tempfile
import unittest

import pyarrow.flight as flight
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sluice_stage import StageServer
from sluice_stage._security import MSG_NO_TOKEN, MSG_WRONG_TOKEN, Security, TokenCheck, security_from_env

from .support import SDK

TOKEN = "tok-3b9e-nobody-may-print"


def _builder(subject, public_key, issuer):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class _Authority:
    """A CA that signs leaf certificates (PEM bytes)."""

    def __init__(self, name):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = (
            _builder(subject, self.key.public_key(), issuer=subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, dns):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]), key.public_key(), issuer=self.name)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _identity():
    """The example identity stage (examples/identity.py)."""
    spec = importlib.util.spec_from_file_location("identity_example", os.path.join(SDK, "examples", "identity.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Identity()


def describe(client, token=None):
    headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
    options = flight.FlightCallOptions(headers=headers, timeout=10)
    return list(client.do_action(flight.Action("describe", b""), options))


class Served(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ca = _Authority("sluice test CA")
        cls.other = _Authority("someone else's CA")
        cls.server_cert, cls.server_key = cls.ca.sign("localhost")
        cls.client_cert, cls.client_key = cls.ca.sign("engine")
        cls.stranger_cert, cls.stranger_key = cls.other.sign("engine")
        security = Security(cert=cls.server_cert, key=cls.server_key, client_ca=cls.ca.pem, token=TOKEN.encode())
        cls.server = StageServer(_identity(), "grpc+tls://localhost:0", **security.server_options())
        cls.location = f"grpc+tls://localhost:{cls.server.port}"

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()

    def connect(self, ca=None, cert=None, key=None):
        kw = {"tls_root_certs": ca or self.ca.pem}
        if cert is not None:
            kw.update(cert_chain=cert, private_key=key)
        return flight.connect(self.location, **kw)

    def test_the_right_certificates_and_token_are_served(self):
        with self.connect(cert=self.client_cert, key=self.client_key) as c:
            [body] = describe(c, TOKEN)
            self.assertIn(b'"name":"identity"', body.body.to_pybytes())

    def test_a_missing_or_wrong_token_is_unauthenticated_without_the_token(self):
        with self.connect(cert=self.client_cert, key=self.client_key) as c:
            for token, says in ((None, MSG_NO_TOKEN), ("not-the-token", MSG_WRONG_TOKEN), (TOKEN + "x", MSG_WRONG_TOKEN)):
                with self.subTest(token=token):
                    with self.assertRaises(flight.FlightUnauthenticatedError) as e:
                        describe(c, token)
                    self.assertIn(says, str(e.exception))
                    self.assertNotIn(TOKEN, str(e.exception))

    def test_a_client_without_a_certificate_or_with_a_stranger_one_is_refused(self):
        for what, cert, key in (("none", None, None), ("another CA's", self.stranger_cert, self.stranger_key)):
            with self.subTest(what):
                with self.connect(cert=cert, key=key) as c:
                    with self.assertRaises(flight.FlightError):
                        describe(c, TOKEN)

    def test_a_client_trusting_another_ca_refuses_the_stage(self):
        with self.connect(ca=self.other.pem, cert=self.client_cert, key=self.client_key) as c:
            with self.assertRaises(flight.FlightError):
                describe(c, TOKEN)


class FromEnvironment(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        ca = _Authority("ca")
        cert, key = ca.sign("localhost")
        self.files = {}
        request = b"-----BEGIN CERTIFICATE REQUEST-----\nAAEC\n-----END CERTIFICATE REQUEST-----\n"
        encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAEC\n-----END ENCRYPTED PRIVATE KEY-----\n"
        for name, data in (("cert.pem", cert), ("key.pem", key), ("ca.pem", ca.pem), ("empty", b""),
                           ("request.pem", request), ("encrypted.pem", encrypted)):
            path = os.path.join(self.dir.name, name)
            with open(path, "wb") as f:
                f.write(data)
            self.files[name] = path

    def test_any_file_bytes_are_taken_or_refused_naming_the_variable(self):
        # random bytes, and good files cut or with a byte changed: a
        # Security or a ValueError naming the variable, never anything else
        rng = random.Random(15)
        f = self.files
        good = {name: open(f[name], "rb").read() for name in ("cert.pem", "key.pem", "ca.pem")}
        variables = {"cert.pem": "SLUICE_STAGE_TLS_CERT", "key.pem": "SLUICE_STAGE_TLS_KEY",
                     "ca.pem": "SLUICE_STAGE_TLS_CLIENT_CA"}
        for _ in range(300):
            which = rng.choice(sorted(good))
            data = bytearray(good[which])
            if rng.random() < 0.3:
                data = bytearray(rng.randbytes(rng.randrange(200)))
            else:
                del data[rng.randrange(len(data) + 1):]
                if data and rng.random() < 0.7:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            path = os.path.join(self.dir.name, "fuzzed")
            with open(path, "wb") as out:
                out.write(data)
            environ = {variables[n]: (path if n == which else f[n]) for n in good}
            try:
                security_from_env(environ)
            except ValueError as e:
                self.assertIn(variables[which], str(e))

    def test_any_authorization_header_is_admitted_only_when_it_is_the_token(self):
        rng = random.Random(16)
        check = TokenCheck(TOKEN.encode())
        values = [None, "", "Bearer", f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer {TOKEN} ", TOKEN]
        values += ["".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(40))) for _ in range(200)]
        for value in values:
            headers = {} if value is None else {"authorization": [value]}
            if value == f"Bearer {TOKEN}":
                self.assertIsNone(check.start_call(None, headers))
                continue
            with self.assertRaises(flight.FlightUnauthenticatedError) as e:
                check.start_call(None, headers)
            self.assertNotIn(TOKEN, str(e.exception))

    def test_a_token_may_hold_what_a_header_may(self):
        self.assertEqual(security_from_env({"SLUICE_STAGE_TOKEN": "a b\tc"}).token, b"a b\tc")

    def test_nothing_set_is_plain_grpc(self):
        s = security_from_env({})
        self.assertFalse(s.tls)
        self.assertEqual(s.server_options(), {})

    def test_everything_set_is_mutual_tls_with_a_token_that_never_shows(self):
        f = self.files
        s = security_from_env({
            "SLUICE_STAGE_TLS_CERT": f["cert.pem"], "SLUICE_STAGE_TLS_KEY": f["key.pem"],
            "SLUICE_STAGE_TLS_CLIENT_CA": f["ca.pem"], "SLUICE_STAGE_TOKEN": TOKEN,
        })
        self.assertTrue(s.tls)
        options = s.server_options()
        self.assertTrue(options["verify_client"])
        self.assertIn("sluice-token", options["middleware"])
        self.assertNotIn(TOKEN, repr(s))

    def test_settings_that_do_not_go_together_or_wrong_files_are_named(self):
        f = self.files
        cases = [
            ({"SLUICE_STAGE_TLS_CLIENT_CA": f["ca.pem"]}, "SLUICE_STAGE_TLS_CLIENT_CA needs"),
            ({"SLUICE_STAGE_TLS_CERT": f["cert.pem"]}, "go together"),
            ({"SLUICE_STAGE_TLS_CERT": f["empty"], "SLUICE_STAGE_TLS_KEY": f["key.pem"]},
             "SLUICE_STAGE_TLS_CERT = \"%s\": no certificate" % f["empty"]),
            ({"SLUICE_STAGE_TLS_CERT": f["cert.pem"], "SLUICE_STAGE_TLS_KEY": f["cert.pem"]},
             "SLUICE_STAGE_TLS_KEY = \"%s\": no unencrypted private key" % f["cert.pem"]),
            ({"SLUICE_STAGE_TLS_CERT": f["cert.pem"], "SLUICE_STAGE_TLS_KEY": os.path.join(self.dir.name, "nope")},
             "SLUICE_STAGE_TLS_KEY = "),
            ({"SLUICE_STAGE_TLS_CERT": f["request.pem"], "SLUICE_STAGE_TLS_KEY": f["key.pem"]},
             "SLUICE_STAGE_TLS_CERT = \"%s\": no certificate" % f["request.pem"]),
            ({"SLUICE_STAGE_TLS_CERT": f["cert.pem"], "SLUICE_STAGE_TLS_KEY": f["encrypted.pem"]},
             "no unencrypted private key"),
            ({"SLUICE_STAGE_TOKEN": "bad\ntoken"}, "cannot carry"),
        ]
        for environ, says in cases:
            with self.subTest(says):
                with self.assertRaises(ValueError) as e:
                    security_from_env(environ)
                self.assertIn(says, str(e.exception))
                self.assertNotIn("bad\ntoken", str(e.exception))


if __name__ == "__main__":
    unittest.main()
