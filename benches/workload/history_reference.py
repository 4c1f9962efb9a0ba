#!/usr/bin/env python3
"""DuckDB's batch answer for a sales history: revenue per machine per UTC day, each sale line
(machine, transaction, coil) counted once however often it was delivered.

usage: history_reference.py HISTORY.jsonl OUT.csv

OUT.csv: machine_id, day (YYYY-MM-DD), revenue_cents, units, lines; sorted.
Independent of vendflow: plain SQL over the raw file.
"""
import sys

import duckdb

src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"""
    COPY (
        WITH deliveries AS (
            SELECT machineId AS machine_id,
                   CAST(timestamp AS BIGINT) AS ts,
                   payload.transactionId AS txn,
                   CAST(payload.slotNumber AS INTEGER) AS slot,
                   CAST(payload.quantity AS BIGINT) AS qty,
                   CAST(payload.amount * 100 AS BIGINT) AS cents
            FROM read_json('{src}', format = 'newline_delimited',
                           columns = {{machineId: 'VARCHAR', type: 'VARCHAR', timestamp: 'BIGINT',
                                      payload: 'STRUCT(slotNumber INTEGER, quantity INTEGER, amount DECIMAL(18, 2), transactionId VARCHAR)'}})
            WHERE type = 'sale'
        ),
        lines AS (
            SELECT machine_id, txn, slot, min(ts) AS ts, any_value(qty) AS qty, any_value(cents) AS cents
            FROM deliveries GROUP BY machine_id, txn, slot
        )
        SELECT machine_id,
               strftime(CAST(epoch_ms(ts) AS DATE), '%Y-%m-%d') AS day,
               sum(cents) AS revenue_cents, sum(qty) AS units, count(*) AS lines
        FROM lines GROUP BY 1, 2 ORDER BY 1, 2
    ) TO '{out}' (HEADER, DELIMITER ',')
""")
