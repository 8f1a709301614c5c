"""The hf:// and ollama:// sources against fake registries that speak the real protocols.

The fakes are proven against the real clients where one is installed: huggingface_hub's own
``hf_hub_download`` fetches from the fake hub. Each Remote a source returns is fetched with a
plain httpx2 GET (redirects followed), as a downloader would, and checked against the bytes
the fake serves and the digest the source promised.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx2
import pytest

from inferno.core.errors import ModelIntegrityError, ModelNotFound, ModelSourceError
from inferno.models.remote import Remote
from inferno.models.sources.hf import HfSource
from inferno.models.sources.hf import parse as parse_hf
from inferno.models.sources.ollama import OllamaRef, OllamaSource
from inferno.models.sources.ollama import parse as parse_ollama
from tests.fakes.hf_hub import FakeHub, FakeRepo
from tests.fakes.oci_registry import FakeRegistry, digest_of

TOKEN = "hf_SECRETtoken0123456789"


def tiny_gguf(path: Path, name: str) -> bytes:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_tensor("w", np.arange(8, dtype=np.float32) + len(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture
def ggufs(tmp_path: Path) -> dict[str, bytes]:
    names = ["tiny-Q4_K_M.gguf", "tiny-Q4_K_S.gguf", "tiny-Q8_0.gguf"]
    return {n: tiny_gguf(tmp_path / n, n) for n in names}


async def fetch(remote: Remote) -> bytes:
    async with httpx2.AsyncClient(follow_redirects=True, timeout=10) as http:
        resp = await http.get(remote.url, headers=remote.headers)
        assert resp.status_code == 200, resp.text
        return resp.content


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("ref", "repo", "file", "quant", "rev"),
    [
        pytest.param("hf://org/repo", "org/repo", None, None, "main", id="bare"),
        pytest.param("hf://org/repo:Q4_K_M", "org/repo", None, "Q4_K_M", "main", id="quant"),
        pytest.param(
            "hf://org/repo/sub/m.gguf@v1", "org/repo", "sub/m.gguf", None, "v1", id="file"
        ),
        pytest.param(
            "hf://org/repo:q8_0@refs/pr/1",
            "org/repo",
            None,
            "q8_0",
            "refs/pr/1",
            id="quant-pr-revision",
        ),
    ],
)
def test_hf_parse(ref: str, repo: str, file: str | None, quant: str | None, rev: str) -> None:
    r = parse_hf(ref)
    assert (r.repo, r.file, r.quant, r.revision) == (repo, file, quant, rev)


@pytest.mark.parametrize("ref", ["hf://org", "hf://org/", "hf://org/repo:Q4/file.gguf"])
def test_hf_parse_refuses_malformed(ref: str) -> None:
    with pytest.raises(ModelSourceError, match="hf://"):
        parse_hf(ref)


async def test_hf_file_resolves_pinned_with_the_lfs_digest(
    hub: FakeHub, ggufs: dict[str, bytes]
) -> None:
    repo = hub.add_repo("org/tiny", FakeRepo({**ggufs, "README.md": b"# tiny\n"}))
    resolved = await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny/tiny-Q8_0.gguf")
    assert (resolved.name, resolved.tag, resolved.revision) == (
        "hf.co/org/tiny",
        "tiny-Q8_0",
        repo.commit,
    )
    [remote] = resolved.files
    assert remote.url == f"{hub.url}/org/tiny/resolve/{repo.commit}/tiny-Q8_0.gguf"
    assert remote.filename == "tiny-Q8_0.gguf"
    assert remote.size == len(ggufs["tiny-Q8_0.gguf"])
    assert remote.sha256 == sha(ggufs["tiny-Q8_0.gguf"])
    assert remote.headers == {}
    # resolving asked the hub only; the CDN redirect was read, not followed
    assert [r.host for r in hub.requests] == ["hub", "hub"]
    assert hub.requests[1].method == "HEAD"
    assert sha(await fetch(remote)) == remote.sha256


@pytest.mark.parametrize(
    ("quant", "file"),
    [
        pytest.param("Q4_K_M", "tiny-Q4_K_M.gguf", id="exact"),
        pytest.param("q4_k_s", "tiny-Q4_K_S.gguf", id="case-insensitive"),
        pytest.param("Q8_0", "tiny-Q8_0.gguf", id="other"),
    ],
)
async def test_hf_quant_picks_its_file(
    hub: FakeHub, ggufs: dict[str, bytes], quant: str, file: str
) -> None:
    hub.add_repo("org/tiny", FakeRepo(ggufs))
    resolved = await HfSource(endpoint=hub.url, token="").resolve(f"hf://org/tiny:{quant}")
    assert resolved.tag == quant
    assert [f.filename for f in resolved.files] == [file]
    assert resolved.files[0].sha256 == sha(ggufs[file])


async def test_hf_quant_is_matched_as_a_word(hub: FakeHub, ggufs: dict[str, bytes]) -> None:
    hub.add_repo("org/tiny", FakeRepo(ggufs))
    with pytest.raises(ModelNotFound) as exc:
        await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny:Q4_K")
    assert "Q4_K" in str(exc.value) and "tiny-Q4_K_M.gguf" in str(exc.value)


async def test_hf_only_gguf_is_taken_and_projectors_are_not_models(
    hub: FakeHub, ggufs: dict[str, bytes]
) -> None:
    hub.add_repo(
        "org/one",
        FakeRepo(
            {
                "tiny-Q8_0.gguf": ggufs["tiny-Q8_0.gguf"],
                "mmproj-tiny-f16.gguf": ggufs["tiny-Q4_K_S.gguf"],
                "config.json": b"{}",
            }
        ),
    )
    resolved = await HfSource(endpoint=hub.url, token="").resolve("hf://org/one")
    assert resolved.tag == "tiny-Q8_0"
    assert [f.filename for f in resolved.files] == ["tiny-Q8_0.gguf"]


async def test_hf_ambiguous_lists_the_candidates(hub: FakeHub, ggufs: dict[str, bytes]) -> None:
    hub.add_repo("org/tiny", FakeRepo(ggufs))
    with pytest.raises(ModelSourceError, match="ambiguous") as exc:
        await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny")
    assert not isinstance(exc.value, ModelNotFound)
    assert all(name in str(exc.value) for name in ggufs)


async def test_hf_split_gguf_comes_whole(hub: FakeHub, tmp_path: Path) -> None:
    parts = {
        f"big-Q4_K_M-0000{i}-of-00002.gguf": tiny_gguf(tmp_path / f"p{i}", f"p{i}") for i in (2, 1)
    }
    hub.add_repo("org/big", FakeRepo(parts))
    resolved = await HfSource(endpoint=hub.url, token="").resolve("hf://org/big:Q4_K_M")
    assert [f.filename for f in resolved.files] == [
        "big-Q4_K_M-00001-of-00002.gguf",
        "big-Q4_K_M-00002-of-00002.gguf",
    ]
    assert [f.sha256 for f in resolved.files] == [sha(parts[f.filename]) for f in resolved.files]


@pytest.mark.parametrize(
    ("ref", "named"),
    [
        pytest.param("hf://org/nope", "org/nope", id="repo"),
        pytest.param("hf://org/nope:Q8_0", "HF_TOKEN", id="repo-401-hints-at-a-token"),
        pytest.param("hf://org/tiny@v9", "revision v9", id="revision"),
        pytest.param("hf://org/tiny/absent.gguf", "absent.gguf", id="file"),
    ],
)
async def test_hf_missing_is_model_not_found(
    hub: FakeHub, ggufs: dict[str, bytes], ref: str, named: str
) -> None:
    hub.add_repo("org/tiny", FakeRepo(ggufs))
    with pytest.raises(ModelNotFound) as exc:
        await HfSource(endpoint=hub.url, token="").resolve(ref)
    assert ref in str(exc.value) and named in str(exc.value)


async def test_hf_missing_repo_with_a_token_is_model_not_found(hub: FakeHub) -> None:
    hub.tokens.add(TOKEN)
    with pytest.raises(ModelNotFound, match="HTTP 404") as exc:
        await HfSource(endpoint=hub.url, token=TOKEN).resolve("hf://org/nope")
    assert "HF_TOKEN" not in str(exc.value) and TOKEN not in str(exc.value)


async def test_hf_file_gone_at_resolve_is_model_not_found(
    hub: FakeHub, ggufs: dict[str, bytes]
) -> None:
    """The API lists a file the resolve endpoint answers 404 for (a push in between)."""
    repo = hub.add_repo("org/tiny", FakeRepo(ggufs, gone={"tiny-Q8_0.gguf"}))
    with pytest.raises(ModelNotFound) as exc:
        await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny:Q8_0")
    assert "tiny-Q8_0.gguf" in str(exc.value) and repo.commit in str(exc.value)


async def test_hf_digests_that_disagree_are_refused(hub: FakeHub, ggufs: dict[str, bytes]) -> None:
    """X-Linked-Etag is the digest; the API's listing only confirms it."""
    stale = "0" * 64
    hub.add_repo("org/tiny", FakeRepo(ggufs, api_sha256={"tiny-Q8_0.gguf": stale}))
    with pytest.raises(ModelSourceError, match="two digests") as exc:
        await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny:Q8_0")
    assert stale in str(exc.value) and sha(ggufs["tiny-Q8_0.gguf"]) in str(exc.value)


async def test_hf_gated_without_token_says_a_token_is_needed(
    hub: FakeHub, ggufs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.add_repo("org/gated", FakeRepo(ggufs, gated=True))
    with pytest.raises(ModelSourceError, match="HF_TOKEN") as exc:
        await HfSource(endpoint=hub.url).resolve("hf://org/gated:Q8_0")
    assert not isinstance(exc.value, ModelNotFound)
    assert "Authorization" not in hub.requests[0].headers


async def test_hf_gated_with_a_wrong_token_never_shows_it(
    hub: FakeHub, ggufs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.add_repo("org/gated", FakeRepo(ggufs, gated=True))
    with pytest.raises(ModelSourceError, match="invalid or lacks access") as exc:
        await HfSource(endpoint=hub.url).resolve("hf://org/gated:Q8_0")
    assert hub.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(exc.value) and TOKEN not in repr(exc.value.args)
    assert TOKEN not in exc.value.to_json().decode()


async def test_hf_gated_with_token_resolves_and_downloads(
    hub: FakeHub, ggufs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.tokens.add(TOKEN)
    hub.add_repo("org/gated", FakeRepo(ggufs, gated=True))
    resolved = await HfSource().resolve("hf://org/gated:Q8_0")
    [remote] = resolved.files
    assert remote.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert TOKEN not in repr(resolved)
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    assert sha(await fetch(remote)) == remote.sha256 == sha(ggufs["tiny-Q8_0.gguf"])
    # the token reached the hub, never the CDN (a signed URL refuses a second credential)
    [cdn] = [r for r in hub.requests if r.host == "cdn"]
    assert "Authorization" not in cdn.headers


async def test_hf_rate_limit_is_retryable_with_retry_after(
    hub: FakeHub, ggufs: dict[str, bytes]
) -> None:
    hub.add_repo("org/tiny", FakeRepo(ggufs))
    hub.fail_next(429, retry_after=7)
    with pytest.raises(ModelSourceError) as exc:
        await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny:Q8_0")
    assert exc.value.retryable and exc.value.retry_after == 7
    assert "429" in str(exc.value)
    resolved = await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny:Q8_0")
    assert resolved.files[0].sha256 == sha(ggufs["tiny-Q8_0.gguf"])


async def test_huggingface_hub_downloads_from_the_fake(
    hub: FakeHub, ggufs: dict[str, bytes], tmp_path: Path
) -> None:
    """The real client, against the fake: the fake speaks the hub's protocol."""
    from huggingface_hub import hf_hub_download

    hub.tokens.add(TOKEN)
    repo = hub.add_repo("org/gated", FakeRepo({**ggufs, "README.md": b"# hi\n"}, gated=True))
    got = {}
    for file in ["tiny-Q4_K_M.gguf", "README.md"]:
        path = await asyncio.to_thread(
            hf_hub_download,
            "org/gated",
            file,
            revision="main",
            endpoint=hub.url,
            cache_dir=tmp_path / "hf",
            token=TOKEN,
        )
        assert repo.commit in path  # the client pinned the commit the fake announced
        got[file] = await asyncio.to_thread(Path(path).read_bytes)
    assert got == {f: repo.files[f] for f in got}
    # and it reads the fake's refusals as the hub's
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    for repo_id, token, error in [
        ("org/gated", False, GatedRepoError),
        ("org/nope", False, RepositoryNotFoundError),
        ("org/nope", TOKEN, RepositoryNotFoundError),
    ]:
        with pytest.raises(error):
            await asyncio.to_thread(
                hf_hub_download,
                repo_id,
                "README.md",
                endpoint=hub.url,
                cache_dir=tmp_path / "hf2",
                token=token,
            )
    resolved = await HfSource(endpoint=hub.url, token=TOKEN).resolve("hf://org/gated:Q4_K_M")
    assert resolved.files[0].sha256 == sha(got["tiny-Q4_K_M.gguf"])


# --- ollama:// -------------------------------------------------------------------------

OLLAMA = "application/vnd.ollama.image."


def ollama_layers(weights: bytes) -> list[tuple[str, bytes]]:
    return [
        (OLLAMA + "model", weights),
        (OLLAMA + "template", b"{{ .Prompt }}"),
        (OLLAMA + "params", b'{"stop": ["<|end|>"]}'),
        (OLLAMA + "license", b"MIT"),
        (OLLAMA + "license", b"Apache-2.0"),
        (OLLAMA + "system", b"You are tiny."),
    ]


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        pytest.param(
            "ollama://qwen2",
            OllamaRef("registry.ollama.ai", "library", "qwen2", "latest"),
            id="name",
        ),
        pytest.param(
            "ollama://qwen2:0.5b",
            OllamaRef("registry.ollama.ai", "library", "qwen2", "0.5b"),
            id="name-tag",
        ),
        pytest.param(
            "ollama://me/tiny:q4",
            OllamaRef("registry.ollama.ai", "me", "tiny", "q4"),
            id="namespace",
        ),
        pytest.param(
            "ollama://Reg.example:5000/me/tiny",
            OllamaRef("reg.example:5000", "me", "tiny", "latest"),
            id="host",
        ),
        pytest.param(
            "ollama://tiny:q4@sha256:" + "AB" * 32,
            OllamaRef("registry.ollama.ai", "library", "tiny", "q4", "ab" * 32),
            id="pinned",
        ),
        pytest.param(
            "ollama://tiny@sha256:" + "ab" * 32,
            OllamaRef("registry.ollama.ai", "library", "tiny", "sha256-" + "ab" * 6, "ab" * 32),
            id="pinned-no-tag",
        ),
    ],
)
def test_ollama_parse(ref: str, want: OllamaRef) -> None:
    assert parse_ollama(ref) == want


@pytest.mark.parametrize(
    "ref", ["ollama://", "ollama://a/b/c/d", "ollama://me//x", "ollama://me/:tag",
            "ollama://me/x@sha256:abc", "ollama://me/x@latest"]
)
def test_ollama_parse_refuses_malformed(ref: str) -> None:
    with pytest.raises(ModelSourceError, match="ollama://"):
        parse_ollama(ref)


async def test_ollama_token_dance_and_layers(
    registry: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tiny_gguf(tmp_path / "w.gguf", "tiny")
    manifest = registry.add_model("library/tiny", "latest", ollama_layers(weights))
    monkeypatch.setenv("INFERNO_OLLAMA_INSECURE_HOSTS", f"other:1, {registry.host}")
    ref = f"ollama://{registry.host}/library/tiny"
    resolved = await OllamaSource().resolve(ref)

    first, token_req, second = registry.requests
    assert "/manifests/latest" in first.path and "Authorization" not in first.headers
    assert token_req.path.startswith("/token?") and "repository%3Alibrary%2Ftiny%3Apull" in (
        token_req.path
    )
    [token] = registry.tokens
    assert second.headers["Authorization"] == f"Bearer {token}"
    assert "manifest.v2+json" in second.headers["Accept"]

    assert (resolved.name, resolved.tag, resolved.source) == (
        f"{registry.host}/library/tiny",
        "latest",
        ref,
    )
    assert resolved.revision == digest_of(manifest)
    assert [(f.filename, f.media_type) for f in resolved.files] == [
        ("config.json", "application/vnd.docker.container.image.v1+json"),
        ("model.gguf", OLLAMA + "model"),
        ("template", OLLAMA + "template"),
        ("params.json", OLLAMA + "params"),
        ("license", OLLAMA + "license"),
        ("license-2", OLLAMA + "license"),
        ("system", OLLAMA + "system"),
    ]
    model = resolved.files[1]
    assert model.url == f"{registry.url}/v2/library/tiny/blobs/sha256:{sha(weights)}"
    assert (model.sha256, model.size) == (sha(weights), len(weights))
    assert token not in repr(resolved)
    for remote in resolved.files:
        assert remote.headers == {"Authorization": f"Bearer {token}"}
        data = await fetch(remote)
        assert (sha(data), len(data)) == (remote.sha256, remote.size)


async def test_ollama_default_namespace_and_tag_reach_the_registry(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    registry.add_model("me/tiny", "q8", ollama_layers(b"GGUF-ish"))
    registry.add_model("library/tiny", "latest", ollama_layers(b"other"))
    source = OllamaSource(insecure_hosts=[registry.host])
    resolved = await source.resolve(f"ollama://{registry.host}/me/tiny:q8")
    assert resolved.files[1].sha256 == sha(b"GGUF-ish")
    assert (resolved.name, resolved.tag) == (f"{registry.host}/me/tiny", "q8")


async def test_a_pinned_digest_fetches_that_manifest_and_refuses_another(
    registry: FakeRegistry
) -> None:
    registry.auth = False
    old = registry.add_model("library/tiny", "v1", ollama_layers(b"old weights"))
    registry.add_model("library/tiny", "v1", ollama_layers(b"new weights"))  # the tag moved
    source = OllamaSource(insecure_hosts=[registry.host])
    pinned = f"ollama://{registry.host}/library/tiny:v1@{digest_of(old)}"
    resolved = await source.resolve(pinned)
    assert registry.requests[-1].path.endswith(f"/manifests/{digest_of(old)}")
    assert resolved.files[1].sha256 == sha(b"old weights") and resolved.tag == "v1"
    # A registry answering a digest with other bytes is caught, not trusted.
    registry.manifests[("library/tiny", digest_of(old))] = registry.manifests[
        ("library/tiny", "v1")]
    with pytest.raises(ModelIntegrityError, match="pinned"):
        await source.resolve(pinned)


async def test_ollama_oci_manifest_without_auth(registry: FakeRegistry) -> None:
    registry.auth = False
    registry.add_model(
        "library/tiny",
        "v1",
        ollama_layers(b"weights"),
        media_type="application/vnd.oci.image.manifest.v1+json",
    )
    resolved = await OllamaSource(insecure_hosts=[registry.host]).resolve(
        f"ollama://{registry.host}/library/tiny:v1"
    )
    assert all(f.headers == {} for f in resolved.files)
    assert [r.path.split("?")[0] for r in registry.requests] == ["/v2/library/tiny/manifests/v1"]
    assert sha(await fetch(resolved.files[1])) == sha(b"weights")


async def test_ollama_unknown_tag_is_model_not_found(registry: FakeRegistry) -> None:
    registry.add_model("library/tiny", "latest", ollama_layers(b"w"))
    ref = f"ollama://{registry.host}/library/tiny:nope"
    with pytest.raises(ModelNotFound) as exc:
        await OllamaSource(insecure_hosts=[registry.host]).resolve(ref)
    assert ref in str(exc.value) and "MANIFEST_UNKNOWN" in str(exc.value)
    assert all(token not in str(exc.value) for token in registry.tokens)


async def test_ollama_refused_token_is_a_source_error(registry: FakeRegistry) -> None:
    registry.add_model("library/tiny", "latest", ollama_layers(b"w"))
    registry.tokens_valid = False  # the token service hands out tokens the registry refuses
    with pytest.raises(ModelSourceError, match="refused") as exc:
        await OllamaSource(insecure_hosts=[registry.host]).resolve(
            f"ollama://{registry.host}/library/tiny"
        )
    assert not isinstance(exc.value, ModelNotFound)
    assert all(token not in str(exc.value) for token in registry.issued)


async def test_ollama_speaks_tls_to_hosts_not_marked_insecure(registry: FakeRegistry) -> None:
    registry.add_model("library/tiny", "latest", ollama_layers(b"w"))
    with pytest.raises(ModelSourceError, match=registry.host.replace(".", r"\.")):
        await OllamaSource(insecure_hosts=[]).resolve(f"ollama://{registry.host}/library/tiny")
