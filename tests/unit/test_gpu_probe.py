"""The GPU probe: nvidia-smi's CSV read, a machine without it reports none, and a fake
``nvidia-smi`` on PATH stands in for the driver's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from inferno.backend.gpu import Gpu, GpuProbe, parse

SAMPLE = "0, NVIDIA H200, 143771, 1024, 37\n1, NVIDIA H200, 143771, 0, [N/A]\nbad line\n"


def test_parse_reads_mib_and_percent() -> None:
    assert parse(SAMPLE) == [
        Gpu(0, "NVIDIA H200", 143771 * 2**20, 1024 * 2**20, 0.37),
        Gpu(1, "NVIDIA H200", 143771 * 2**20, 0, 0.0),
    ]


async def test_without_nvidia_smi_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    probe = GpuProbe()
    assert not probe.available and await probe.refresh() == []


async def test_a_driver_on_path_is_queried_and_cached(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nprintf '{SAMPLE}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    probe = GpuProbe(interval=3600)
    assert probe.available
    first = await probe.refresh()
    assert [g.name for g in first] == ["NVIDIA H200", "NVIDIA H200"]
    assert await probe.refresh() == first  # cached: the driver was asked once
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and "--format=csv,noheader,nounits" in lines[0]


async def test_a_node_reports_its_gpus_in_telemetry_and_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import httpx2 as httpx

    from tests.conftest import start_fake_node
    from tests.polling import eventually

    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{SAMPLE}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    node = await start_fake_node()
    try:
        ops = f"http://127.0.0.1:{node.ops.port}"
        async with httpx.AsyncClient(timeout=10) as http:
            async def gpus() -> list[dict[str, object]]:
                return list((await http.get(f"{ops}/telemetry")).json()["gpus"])

            found = await eventually(gpus, what="the GPUs in /telemetry")
            assert [g["name"] for g in found] == ["NVIDIA H200", "NVIDIA H200"]
            text = (await http.get(f"{ops}/metrics")).text
            assert 'inferno_gpu_utilization{gpu="0",name="NVIDIA H200"} 0.37' in text
    finally:
        await node.drain()
