"""Cross-checks an exported vendflow archive with DuckDB and pyarrow.

usage: archive_check.py EXPORT_DIR REVENUE_CSV WINDOWS_CSV

- pyarrow opens every Parquet file (Hive partitions date/hour) and checks that no input position
  was written twice: a (stream, offset) pair holds each of its events once.
- DuckDB answers "revenue per machine per day" (distinct sale lines: machine, transaction, slot;
  the first delivery wins) and "max temperature per machine per 5-minute window" over the
  exported events; both must equal vendflow's SQL answers (the CSV files, from `POST /sql`).
Prints what it compared; exits 1 with the differences otherwise.
"""
import csv
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.dataset as ds

export, revenue_csv, windows_csv = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
events = export / "events"
files = sorted(str(p) for p in events.rglob("*.parquet"))
if not files:
    sys.exit(f"no Parquet files under {events}")
if list(export.rglob("*.tmp")):
    sys.exit("temporary files were exported")

table = ds.dataset(str(events), format="parquet", partitioning="hive").to_table()
keys = ["stream", "\"offset\"", "machine_id", "type", "event_time", "seq", "transaction_id", "slot_number"]
con = duckdb.connect()
con.register("t", table)
dups = con.execute(
    f"SELECT {', '.join(keys)}, count(*) c FROM t GROUP BY ALL HAVING count(*) > 1 LIMIT 5"
).fetchall()
if dups:
    sys.exit(f"rows written twice for one input position: {dups}")
print(f"pyarrow: {table.num_rows} events in {len(files)} files, no input position twice")

glob = f"{events}/**/*.parquet"
revenue = con.execute(
    f"""
    WITH lines AS (
      SELECT machine_id, transaction_id, slot_number,
             arg_min(amount, stream || ':' || lpad(CAST("offset" AS VARCHAR), 20, '0')) AS amount,
             arg_min(event_time, stream || ':' || lpad(CAST("offset" AS VARCHAR), 20, '0')) AS made_at
      FROM read_parquet('{glob}', hive_partitioning = true)
      WHERE type = 'sale'
      GROUP BY machine_id, transaction_id, slot_number)
    SELECT machine_id, strftime(DATE '1970-01-01' + CAST(epoch_ms(made_at) // 86400000 AS INTEGER), '%Y-%m-%d') AS day, sum(amount)
    FROM lines GROUP BY 1, 2 ORDER BY 1, 2
    """
).fetchall()
duck_revenue = {(m, d): Decimal(v) for m, d, v in revenue}
windows = con.execute(
    f"""
    SELECT machine_id,
           epoch_ms(event_time) // 300000 * 300000 AS window_ms,
           max(temperature)
    FROM read_parquet('{glob}', hive_partitioning = true)
    WHERE type = 'heartbeat' AND temperature IS NOT NULL
    GROUP BY 1, 2
    """
).fetchall()
duck_windows = {(m, int(w)): Decimal(t) for m, w, t in windows}


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


ours_revenue = {(r["machine_id"], r["day"]): Decimal(r["revenue"]) for r in read(revenue_csv)}
ours_windows = {}
for r in read(windows_csv):
    if r["max_temperature"]:
        ours_windows[(r["machine_id"], int(r["window_ms"]))] = Decimal(r["max_temperature"])

failed = False
for name, duck, ours in [("revenue per machine per day", duck_revenue, ours_revenue),
                         ("max temperature per window", duck_windows, ours_windows)]:
    if duck != ours:
        failed = True
        only_duck = sorted(set(duck.items()) - set(ours.items()))[:5]
        only_ours = sorted(set(ours.items()) - set(duck.items()))[:5]
        print(f"{name}: DuckDB {len(duck)} rows, vendflow {len(ours)} rows differ\n"
              f"  DuckDB only: {only_duck}\n  vendflow only: {only_ours}")
    else:
        print(f"{name}: DuckDB equals vendflow SQL ({len(duck)} rows)")
sys.exit(1 if failed else 0)
