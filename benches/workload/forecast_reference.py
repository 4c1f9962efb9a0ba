#!/usr/bin/env python3
"""DuckDB's answer for the forecast backtest's baseline, and the noise floor of a generated history.

usage: forecast_reference.py HISTORY.jsonl [--expected EXPECTED.csv] [--warmup-days 56]

Prints one JSON object:
  naive   the design document's naive method (average daily sales of the last 30 days) scored
          as `vendflow forecast backtest` scores it: slot_days, units, wape, mape;
  floor   with --expected (gen_history.py --locations): the same slot-days forecast with the
          generator's own expected units, the best any forecast of the mean could do: wape, mape.

Independent of vendflow: plain SQL over the raw file, with the backtest's rules written out again:
- each sale line (machine, transaction, coil) counts once, on its UTC day;
- a machine is observed from its first event's day; day 0 is the history's first day;
- a slot-day is scored from day `warmup` on, after the machine's first day and the slot's first
  sale, up to the history's last day;
- naive forecast: the slot's units over the observed days among the 30 before, divided by their
  number;
- WAPE = sum |f - a| / sum a; MAPE = mean of |f - a| / a over slot-days with a > 0.
"""
import argparse
import json

import duckdb

p = argparse.ArgumentParser()
p.add_argument("history")
p.add_argument("--expected")
p.add_argument("--warmup-days", type=int, default=56)
a = p.parse_args()

con = duckdb.connect()
con.execute(f"""
    CREATE TABLE deliveries AS
    SELECT machineId AS machine_id, type,
           CAST(floor(CAST(timestamp AS BIGINT) / 86400000) AS BIGINT) AS day,
           payload.transactionId AS txn,
           CAST(payload.slotNumber AS INTEGER) AS slot,
           CAST(payload.quantity AS BIGINT) AS qty
    FROM read_json('{a.history}', format = 'newline_delimited',
                   columns = {{machineId: 'VARCHAR', type: 'VARCHAR', timestamp: 'BIGINT',
                              payload: 'STRUCT(slotNumber INTEGER, quantity INTEGER, transactionId VARCHAR)'}})
""")
con.execute("""
    CREATE TABLE lines AS
    SELECT machine_id, txn, slot, min(day) AS day, any_value(qty) AS qty
    FROM deliveries WHERE type = 'sale' GROUP BY machine_id, txn, slot
""")
con.execute("""
    CREATE TABLE bounds AS SELECT min(day) AS first, max(day) AS last FROM deliveries
""")
con.execute("""
    CREATE TABLE machines AS SELECT machine_id, min(day) AS first_day FROM deliveries GROUP BY 1
""")
con.execute("""
    CREATE TABLE slots AS SELECT machine_id, slot, min(day) AS first_sale FROM lines GROUP BY 1, 2
""")
# Every slot's every day from its machine's first day to the history's last, with its units.
con.execute("""
    CREATE TABLE daily AS
    WITH grid AS (
        SELECT s.machine_id, s.slot, s.first_sale, d.day
        FROM slots s JOIN machines m USING (machine_id), bounds b,
             LATERAL (SELECT unnest(range(m.first_day, b.last + 1)) AS day) d
    ),
    units AS (SELECT machine_id, slot, day, sum(qty) AS units FROM lines GROUP BY 1, 2, 3)
    SELECT g.machine_id, g.slot, g.first_sale, g.day, coalesce(u.units, 0) AS units
    FROM grid g LEFT JOIN units u USING (machine_id, slot, day)
""")
con.execute(f"""
    CREATE TABLE naive AS
    SELECT machine_id, slot, day, units AS actual,
           coalesce(sum(units) OVER w, 0) / greatest(count(*) OVER w, 1) AS forecast,
           first_sale
    FROM daily
    WINDOW w AS (PARTITION BY machine_id, slot ORDER BY day
                 ROWS BETWEEN 30 PRECEDING AND 1 PRECEDING)
""")
con.execute(f"""
    CREATE TABLE scored AS
    SELECT n.* FROM naive n, bounds b
    WHERE n.day >= b.first + {a.warmup_days} AND n.day > n.first_sale
""")


def score(table, forecast):
    row = con.execute(f"""
        SELECT count(*), sum(actual), sum(abs({forecast} - actual)) / sum(actual),
               avg(CASE WHEN actual > 0 THEN abs({forecast} - actual) / actual END)
        FROM {table}
    """).fetchone()
    return {"slot_days": row[0], "units": float(row[1]), "wape": row[2], "mape": row[3]}


out = {"naive": score("scored", "forecast")}
if a.expected:
    con.execute(f"""
        CREATE TABLE expected AS
        SELECT machine_id, CAST(slot_number AS INTEGER) AS slot,
               CAST(floor(epoch(CAST(day AS DATE)) / 86400) AS BIGINT) AS day,
               CAST(expected_units AS DOUBLE) AS expected
        FROM read_csv('{a.expected}', header = true, all_varchar = true)
    """)
    con.execute("""
        CREATE TABLE floor AS
        SELECT s.*, coalesce(e.expected, 0) AS expected
        FROM scored s LEFT JOIN expected e USING (machine_id, slot, day)
    """)
    out["floor"] = score("floor", "expected")
print(json.dumps(out))
