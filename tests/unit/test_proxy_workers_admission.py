"""Batch work yields to interactive traffic on any worker of ``inferno proxy --workers N``:
two admissions on one shared board, as worker 0 (which runs batch items) and worker 1
(which serves interactive requests only). The processes: tests/integration."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterator

import pytest

from inferno.api.node import Registration
from inferno.proxy.admission import Admission
from inferno.proxy.board import WAITING, Board, create_board
from inferno.proxy.pool import Node, Pool
from tests.polling import eventually


@pytest.fixture
def board_fd() -> Iterator[int]:
    fd = create_board(2)
    yield fd
    os.close(fd)


def one_node(capacity: int = 8) -> list[Node]:
    pool = Pool(default_lease=30)
    pool.upsert(Registration.model_validate({
        "id": "n1", "address": "127.0.0.1:9000", "metrics_port": 9000, "models": ["m"],
        "capacity": capacity, "lease_seconds": 30}))
    return list(pool.snapshot.nodes)


def pair(fd: int, window: float = 2.0) -> tuple[Admission, Admission]:
    """(worker 0, worker 1): each maps the board anew, as each worker process does."""
    w0, w1 = (Admission(max_per_node=0, queue_size=10, queue_wait=5.0,
                        reserve_window=window, board=Board(fd, i)) for i in (0, 1))
    return w0, w1


def test_a_restarted_worker_starts_its_row_afresh_and_rows_stay_apart(board_fd: int) -> None:
    first = Board(board_fd, 1)
    first.set(WAITING, 7.0)
    assert Board(board_fd, 0).others(time.monotonic(), 2.0).waiting == 7
    Board(board_fd, 1)  # worker 1 again, after a restart
    assert Board(board_fd, 0).others(time.monotonic(), 2.0).waiting == 0
    with pytest.raises(ValueError, match="no row"):
        Board(board_fd, 2)


def test_interactive_peak_on_another_worker_reserves_its_slots(board_fd: int) -> None:
    batch, interactive = pair(board_fd)
    nodes = one_node(capacity=8)
    assert batch.background_room(nodes) == nodes  # idle proxy: the batch may fill it
    interactive.note_interactive(6)  # six interactive requests in flight on worker 1
    # 1 + 6 of 8 slots kept for interactive work: the node has room for one batch item.
    nodes[0].outstanding = 1
    assert batch.background_room(nodes) == []
    nodes[0].outstanding = 0
    assert batch.background_room(nodes) == nodes


async def test_an_interactive_request_queued_elsewhere_stops_background_work(
        board_fd: int) -> None:
    batch, interactive = pair(board_fd)
    nodes = one_node()
    waiter = asyncio.create_task(interactive.wait(time.monotonic() + 10))
    await eventually(lambda: interactive.queued == 1, what="worker 1's request to queue")
    assert batch.background_room(nodes) == []
    interactive.release()
    await waiter
    assert batch.background_room(nodes) == nodes


async def test_slow_interactive_answers_elsewhere_cut_the_proxys_background_limit(
        board_fd: int) -> None:
    batch, interactive = pair(board_fd, window=0.5)
    nodes = one_node(capacity=64)
    for _ in range(20):  # worker 1's reference: 10 ms without background work
        interactive.observe_interactive(0.010)
    assert math.isinf(interactive.background.limit)
    batch.background_in_flight = 16  # worker 0 runs a batch ...
    assert interactive.background_total() == 16  # ... and worker 1 sees it
    assert batch.background_room(nodes) == nodes
    for _ in range(5):  # ... while worker 1's interactive requests slow down
        interactive.observe_interactive(0.030)
    assert interactive.background.limit < 16  # cut below what runs
    assert batch.background_room(nodes) == []  # so worker 0 starts no more
    # Worker 1's traffic stops: its limit no longer holds once its window has passed.
    await eventually(lambda: batch.background_room(nodes) == nodes,
                     what="the limit lifted with worker 1 idle", timeout=5)
