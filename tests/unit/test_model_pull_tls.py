"""``https://`` pulls go through httpx2 with certificate checks: a server whose certificate
the machine does not trust is refused; trusting its CA (``SSL_CERT_FILE``) lets it through."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inferno.core.errors import InfernoError
from inferno.models.pull import pull
from inferno.models.sources.url import UrlSource
from inferno.models.store import ModelStore
from tests.fakes.file_server import FileServer
from tests.fakes.tiny_gguf import write_tiny_gguf


def self_signed(dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inferno test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
            ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir / "cert.pem", dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[FileServer, Path]]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = await FileServer(ssl=ctx).start()
    yield server, cert
    await server.stop()


async def test_an_untrusted_certificate_is_refused(
    tls_server: tuple[FileServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server.files["/tiny.gguf"] = write_tiny_gguf(tmp_path / "t.gguf")
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InfernoError, match=r"TLS certificate is not trusted.*SSL_CERT_FILE"):
        await pull(f"{server.url}/tiny.gguf", store, sources=(UrlSource(),))
    assert store.list() == [] and not server.requests  # no request got past the handshake


async def test_a_trusted_certificate_pulls_over_https(
    tls_server: tuple[FileServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    data = write_tiny_gguf(tmp_path / "t.gguf")
    server.files["/tiny.gguf"] = data
    store = ModelStore(tmp_path / "models")
    m = await pull(f"{server.url}/tiny.gguf", store, sources=(UrlSource(),))
    assert server.url.startswith("https://") and server.requests  # it went over TLS
    assert m.layers[0].digest == hashlib.sha256(data).hexdigest()
    assert store.blob_path(m.layers[0].digest).read_bytes() == data
