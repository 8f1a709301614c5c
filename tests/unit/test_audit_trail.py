"""Administrative actions land in the audit trail: key changes over HTTP and from the CLI,
model load/unload/deploy through the proxy, the governator's scale decisions; read back
over ``GET /v1/admin/audit`` and ``inferno audit``, and ``inferno audit verify`` catches an
edited row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from typer.testing import CliRunner

from inferno.cli import app
from inferno.governator.policy import Decision
from inferno.governator.store import SqlStore
from inferno.proxy.security.keys import create_key
from inferno.store import Store
from tests.conftest import start_gateway
from tests.polling import eventually


async def rows_of(http: httpx.AsyncClient, base: str, admin: str,
                  **params: Any) -> list[dict[str, Any]]:
    r = await http.get(f"{base}/v1/admin/audit", params=params,
                       headers={"authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def test_key_changes_over_http_are_audited_without_secrets(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path)
    try:
        assert gw.security.store is not None
        admin, admin_row = await create_key(gw.security.store, name="ops", scope="admin",
                                            models=None, rpm=None, tpm=None)
        user, _ = await create_key(gw.security.store, name="app", scope="user", models=None,
                                   rpm=None, tpm=None)
        await gw.security.keys.refresh()
        await eventually(lambda: gw.security.auth.enabled, what="auth on once keys exist")
        base = f"http://127.0.0.1:{gw.server.port}"
        async with httpx.AsyncClient(timeout=10) as http:
            as_admin = {"authorization": f"Bearer {admin}", "x-request-id": "req-123"}
            r = await http.post(f"{base}/v1/admin/keys", headers=as_admin,
                                json={"name": "ci", "scope": "user", "rpm": 60})
            assert r.status_code == 201
            new_id, new_key = r.json()["id"], r.json()["key"]
            r = await http.delete(f"{base}/v1/admin/keys/{new_id}", headers=as_admin)
            assert r.status_code == 200
            r = await http.delete(f"{base}/v1/admin/keys/nosuchkey", headers=as_admin)
            assert r.status_code == 404

            async def three() -> list[dict[str, Any]]:
                found = await rows_of(http, base, admin, action="key")
                return found if len(found) == 3 else []

            rows = await eventually(three, what="three key actions in the trail")
            assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
                ("key.revoke", "nosuchkey", "not found"),
                ("key.revoke", new_id, "ok"),
                ("key.create", new_id, "ok"),
            ]
            assert {r["actor"] for r in rows} == {admin_row.id}
            assert rows[-1]["request_id"] == "req-123"
            assert rows[-1]["detail"]["rpm"] == 60
            text = json.dumps(rows)
            secret = new_key.split("_", 2)[2]  # inf_<id>_<secret>; the secret may hold "_"
            assert new_key not in text and secret not in text

            page = await rows_of(http, base, admin, limit=2)
            assert len(page) == 2
            r = await http.get(f"{base}/v1/admin/audit", headers={"authorization":
                                                                   f"Bearer {user}"})
            assert r.status_code == 403  # admin scope only
    finally:
        await gw.drain()


def test_cli_key_changes_are_audited_and_verify_catches_an_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERNO_PROXY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("INFERNO_DATABASE_URL", raising=False)
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "batch", "--scope", "user"])
    assert created.exit_code == 0, created.output
    listed = runner.invoke(app, ["audit", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert row["action"] == "key.create" and row["actor"].startswith("cli:")
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0 and "ok: 1 rows" in ok.output
    with sqlite3.connect(tmp_path / "inferno.db") as db:  # someone rewrites history
        assert db.execute("UPDATE inferno_audit SET actor = 'nobody'").rowcount == 1
    bad = runner.invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1 and "row 1: its content does not match its hash" in bad.output


async def test_scale_decisions_are_audited_once(tmp_path: Path) -> None:
    shared = Store(f"sqlite:///{tmp_path / 'inferno.db'}")
    gov = SqlStore(shared, flush_interval=0.05)
    await gov.start()
    try:
        for i, action in enumerate(("up", "hold", "down")):
            await gov.add_decision(Decision(pool="smol", at=float(i), current=1, desired=2,
                                            action=action,  # type: ignore[arg-type]
                                            reason="queue wait p95 3.1s > 2s",
                                            node_type="cpu", outcome="ok"))
        assert await gov.flush()
        rows = await shared.audit.find()
        assert [(r["action"], r["target"], r["actor"]) for r in rows] == [
            ("scale.down", "smol", "system"), ("scale.up", "smol", "system")]
        assert rows[-1]["detail"]["reason"] == "queue wait p95 3.1s > 2s"
        await gov._write_decisions([{"id": rows[-1]["detail"]["decision_id"], "at": 0.0,
                                     "pool": "smol", "current": 1, "desired": 2,
                                     "action": "up", "reason": "r", "node_type": "cpu",
                                     "signals": {}, "outcome": "ok"}])
        assert len(await shared.audit.find()) == 2  # a retried batch is not audited twice
    finally:
        await gov.close()
        await shared.close()
