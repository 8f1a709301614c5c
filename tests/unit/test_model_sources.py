"""The hf:// and ollama:// sources against fake registries that speak the real protocols.

The fakes are proven against the real clients where one is installed: huggingface_hub's own
``hf_hub_download`` fetches from the fake hub. Each Remote a source returns is fetched with a
plain httpx2 GET (redirects followed), as a downloader would, and checked against the bytes
the fake serves and the digest the source promised.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
import pytest_asyncio

from inferno.core.errors import ModelNotFound, ModelSourceError
from inferno.models.remote import Remote
from inferno.models.sources.hf import HfSource
from inferno.models.sources.hf import parse as parse_hf
from tests.fakes.hf_hub import FakeHub, FakeRepo

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


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    await fake.start()
    yield fake
    await fake.close()


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


async def test_hf_file_gone_at_resolve_is_model_not_found(
    hub: FakeHub, ggufs: dict[str, bytes]
) -> None:
    """The API lists a file the resolve endpoint answers 404 for (a push in between)."""
    repo = hub.add_repo("org/tiny", FakeRepo(ggufs, gone={"tiny-Q8_0.gguf"}))
    with pytest.raises(ModelNotFound) as exc:
        await HfSource(endpoint=hub.url, token="").resolve("hf://org/tiny:Q8_0")
    assert "tiny-Q8_0.gguf" in str(exc.value) and repo.commit in str(exc.value)


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
    resolved = await HfSource(endpoint=hub.url, token=TOKEN).resolve("hf://org/gated:Q4_K_M")
    assert resolved.files[0].sha256 == sha(got["tiny-Q4_K_M.gguf"])
