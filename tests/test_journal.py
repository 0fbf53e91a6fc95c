"""The journal of entries a shared tier missed: on disk, bounded, oldest dropped and counted."""

from __future__ import annotations

import asyncio
import time

from server.cache.journal import Journal

KEYS = [f"{n:064x}" for n in range(1, 5)]


def test_entries_survive_a_new_journal_on_the_same_folder(tmp_path):
    asyncio.run(Journal(tmp_path, 10).add(f"{KEYS[0]}.wav", frozenset({"l2", "s3"})))
    assert asyncio.run(Journal(tmp_path, 10).pending()) == [(f"{KEYS[0]}.wav", ["l2", "s3"])]


def test_settling_keeps_the_tiers_still_missing_and_forgets_a_finished_entry(tmp_path):
    journal = Journal(tmp_path, 10)

    async def run() -> list[list[tuple[str, list[str]]]]:
        await journal.add(f"{KEYS[0]}.wav", frozenset({"l2", "s3"}))
        await journal.settle(f"{KEYS[0]}.wav", ["s3"])
        partly = await journal.pending()
        await journal.settle(f"{KEYS[0]}.wav", [])
        return [partly, await journal.pending()]

    assert asyncio.run(run()) == [[(f"{KEYS[0]}.wav", ["s3"])], []]


def test_a_full_journal_drops_its_oldest_entry_and_counts_it(tmp_path):
    dropped: list[int] = []
    journal = Journal(tmp_path, 2, on_drop=lambda: dropped.append(1))

    async def run() -> list[str]:
        for key in KEYS[:3]:
            await journal.add(f"{key}.wav", frozenset({"l2"}))
            time.sleep(0.05)  # distinct modification times: the order is the age
        return [name for name, _ in await journal.pending()]

    assert asyncio.run(run()) == [f"{KEYS[1]}.wav", f"{KEYS[2]}.wav"]
    assert (journal.dropped, len(dropped)) == (1, 1)


def test_files_that_are_not_journal_entries_are_ignored(tmp_path):
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "not-a-key.pending").write_text("l2")
    assert asyncio.run(Journal(tmp_path, 10).pending()) == []
