"""The shared event reader: every follower gets its job's events once and in order, however
it joins, from one thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from service.streams import EventHub, Follower
from tests.support.jobs import job, put
from workers.store.sqlite import SQLiteStore


async def collect(follower: Follower, upto: int, timeout_s: float = 10.0) -> list[int]:
    seqs: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (not seqs or seqs[-1] < upto) and loop.time() < deadline:
        events = await follower.next(0.5)
        seqs += [e.seq for e in events or ()]
    return seqs


def test_followers_get_every_event_once_in_order_however_they_join(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    put(store, job("a"), job("b"))  # each with its queued event, seq 1
    for i in range(5):
        store.append_event("a", "progress", {"step": i})

    async def main() -> tuple[list[int], list[int], list[int], list[int], int]:
        hub = EventHub(store)
        hub.start()
        try:
            early = hub.follow("a", 0)
            assert await collect(early, 6) == [1, 2, 3, 4, 5, 6]
            writer = threading.Thread(target=lambda: [
                store.append_event(j, "progress", {"step": i})
                for i in range(20) for j in ("a", "b")])
            writer.start()
            late = hub.follow("a", 3)  # behind the shared cursor: its own first read
            other = hub.follow("b", 0)
            resumed = hub.follow("a", 25)
            results = await asyncio.gather(collect(early, 26), collect(late, 26),
                                           collect(other, 21), collect(resumed, 26))
            writer.join()
            threads = sum(1 for t in threading.enumerate() if t.name == "convoy-events")
            for f in (early, late, other, resumed):
                hub.unfollow(f)
            assert hub.following() == 0
            return (*results, threads)
        finally:
            hub.stop()

    early, late, other, resumed, threads = asyncio.run(main())
    assert early == list(range(7, 27))
    assert late == list(range(4, 27))
    assert other == list(range(1, 22))
    assert resumed == [26]
    assert threads == 1  # four followers, one reader
