"""Compares the raw records of two vendflow Parquet archives with DuckDB and pyarrow.

usage: archive_compare.py ARCHIVE_A ARCHIVE_B

Either may be several archives separated by commas (a cluster's processes, each archiving the
partitions it reads): their records are taken together.

For `events` and `rejected`: each archive holds every input position (stream, offset) at most
once per record, and both hold the same records (as multisets) on every column but the time a
record was received (and `rejected`'s partitions, by that time), which depends on when an engine read the log, not on the log. Prints what
it compared; exits 1 with the differences otherwise.
"""
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

a = [Path(p) for p in sys.argv[1].split(",")]
b = [Path(p) for p in sys.argv[2].split(",")]
con = duckdb.connect()
failed = []


def load(roots: list, table: str):
    parts = [
        ds.dataset(str(root / table), format="parquet", partitioning="hive").to_table()
        for root in roots
        if list((root / table).rglob("*.parquet"))
    ]
    if not parts:
        return None
    t = pa.concat_tables(parts, promote_options="default")
    # `rejected` is partitioned by the time received: its date and hour go with it.
    received = {"date", "hour"} if table == "rejected" else set()
    keep = [c for c in t.column_names if "received" not in c and c not in received]
    return t.select(keep)


for table in ["events", "rejected"]:
    ta, tb = load(a, table), load(b, table)
    if ta is None and tb is None:
        print(f"{table}: in neither archive")
        continue
    if ta is None or tb is None:
        failed.append(f"{table}: only in {'B' if ta is None else 'A'}")
        continue
    if sorted(ta.column_names) != sorted(tb.column_names):
        failed.append(f"{table}: columns differ: {ta.column_names} vs {tb.column_names}")
        continue
    tb = tb.select(ta.column_names)
    con.register("ta", ta)
    con.register("tb", tb)
    for name in ["ta", "tb"]:
        dups = con.execute(
            f"SELECT *, count(*) c FROM {name} GROUP BY ALL HAVING count(*) > 1 LIMIT 3"
        ).fetchall()
        if dups:
            failed.append(f"{table}: archive {name[1].upper()} holds a record twice: {dups}")
    only_a = con.execute("SELECT * FROM ta EXCEPT ALL SELECT * FROM tb LIMIT 5").fetchall()
    only_b = con.execute("SELECT * FROM tb EXCEPT ALL SELECT * FROM ta LIMIT 5").fetchall()
    if only_a or only_b:
        failed.append(
            f"{table}: {ta.num_rows} rows in A, {tb.num_rows} in B; only in A: {only_a}; only in B: {only_b}"
        )
    else:
        print(f"{table}: the same {ta.num_rows} records in both archives, none twice")
    con.unregister("ta")
    con.unregister("tb")

if failed:
    sys.exit("\n".join(failed))
