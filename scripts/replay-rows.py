#!/usr/bin/env python3
"""Replays the rows of an embedded store into a fresh SQLite file, to measure what the storage
layout costs without the engine.

    python3 scripts/replay-rows.py DATA/hutong.db full|deferred [RESOURCES_PER_TRANSACTION [OUT]]

DATA is a data folder written by `hutong bench ingest --engine-only --data DATA` (or any
embedded store). The rows of `resource`, `resource_history`, `compartment` and the `idx_*` tables
are copied in rid order (the order the committer writes them), one transaction per
RESOURCES_PER_TRANSACTION resources (default 316, two of the bench's Bundles, as the
committer's group commits hold), with the store's pragmas (WAL, synchronous=NORMAL, 8 MiB page
cache, no memory map) into OUT (default /tmp/replay-MODE.db, replaced if it exists).

- full: every index of the store in place during the load, as the server writes today;
- deferred: the secondary indexes (every CREATE INDEX of the schema; primary keys and the
  resource table's UNIQUE (type, id) stay) are created after the load, in one pass each.

Prints resources/s for the load, the time of the index build and the rate of both together.
Uses Python's own SQLite library, which may be another version than the server's: compare the
two modes with each other, not with `hutong bench`. A measuring tool only; the server has no
deferred-index mode.
"""
import os
import re
import sqlite3
import sys
import time


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] not in ("full", "deferred"):
        sys.exit(__doc__)
    source, mode = sys.argv[1], sys.argv[2]
    per_transaction = int(sys.argv[3]) if len(sys.argv) > 3 else 316
    target = sys.argv[4] if len(sys.argv) > 4 else f"/tmp/replay-{mode}.db"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    schema = [
        row[0]
        for row in sqlite3.connect(source).execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        )
    ]
    tables = [s for s in schema if s.startswith("CREATE TABLE")]
    indexes = [s for s in schema if s.startswith(("CREATE INDEX", "CREATE UNIQUE INDEX"))]
    db = sqlite3.connect(target, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-8192", "mmap_size=0"):
        db.execute("PRAGMA " + pragma)
    for statement in tables:
        db.execute(statement)
    if mode == "full":
        for statement in indexes:
            db.execute(statement)
    db.execute("ATTACH ? AS src", (source,))
    names = [re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", s).group(1) for s in tables]
    by_rid = [n for n in names if n in ("resource", "resource_history", "compartment") or n.startswith("idx_")]
    last = db.execute("SELECT max(rid) FROM src.resource").fetchone()[0] or 0
    started = time.time()
    for low in range(1, last + 1, per_transaction):
        db.execute("BEGIN IMMEDIATE")
        for name in by_rid:
            db.execute(
                f"INSERT INTO main.{name} SELECT * FROM src.{name} WHERE rid BETWEEN ? AND ?",
                (low, low + per_transaction - 1),
            )
        db.execute("COMMIT")
    load = time.time() - started
    started = time.time()
    if mode == "deferred":
        for statement in indexes:
            db.execute(statement)
    build = time.time() - started
    print(
        f"{mode}: {last} resources, load {load:.1f} s ({last / load:.0f} resources/s), "
        f"index build {build:.1f} s, together {last / (load + build):.0f} resources/s"
    )


if __name__ == "__main__":
    main()
