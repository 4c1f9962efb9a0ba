#!/usr/bin/env python3
"""A months-long sales history shaped like a real operator's export, in two forms.

usage: gen_history.py OUT_DIR [--machines 20] [--days 182] [--seed 7] [--sorted]

Writes
  OUT_DIR/history.jsonl  sale events (vendflow's JSON Lines), shuffled (unless --sorted), with
                         re-deliveries of some lines (the same line again: same machine,
                         transaction and coil) minutes to 30 days after the sale, as a machine's
                         re-sent buffer would; some sales first delivered days late.
  OUT_DIR/export.csv     the same sales, each line once, as an operator's export: a header,
                         US dates ("1/31/2022 13:05"), money as "$1,234.50"-style text, quantity,
                         coil, cash/card, in machine order (not time order).

Carts: one transaction of 1-3 lines (different coils); quantities 1-3 (amount = line total);
coils are selection codes 101-148; prices multiples of 5 cents; machines have weekday patterns.
Deterministic for a seed. Timestamps are UTC epoch milliseconds.
"""
import argparse, csv, datetime as dt, json, os, random

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--machines", type=int, default=20)
p.add_argument("--days", type=int, default=182)
p.add_argument("--seed", type=int, default=7)
p.add_argument("--sorted", action="store_true")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
rnd = random.Random(a.seed)
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
DAY_MS = 86_400_000

lines = []  # (ts, machine, txn, coil, product, qty, amount_cents, method)
for m in range(a.machines):
    machine = "VM-%03d" % (m + 1)
    coils = rnd.sample(range(101, 149), 20)
    price = {c: 5 * rnd.randrange(20, 80) for c in coils}
    base = rnd.uniform(3, 25)
    weekday_factor = [rnd.uniform(0.6, 1.4) for _ in range(7)]
    txn_no = 0
    for d in range(a.days):
        day = START + dt.timedelta(days=d)
        n = max(0, int(rnd.gauss(base * weekday_factor[day.weekday()], 3)))
        for _ in range(n):
            ts = int(day.timestamp() * 1000) + rnd.randrange(DAY_MS)
            txn_no += 1
            txn = "%s-%06d" % (machine, txn_no)
            method = "card" if rnd.random() < 0.6 else "cash"
            for coil in rnd.sample(coils, rnd.choice([1, 1, 1, 2, 3])):
                qty = rnd.choice([1, 1, 1, 1, 2, 3])
                lines.append((ts, machine, txn, coil, "P%d" % coil, qty, price[coil] * qty, method))


def event(l):
    ts, machine, txn, coil, product, qty, cents, method = l
    # The amount as an exact decimal literal (never through a float).
    return ('{"machineId":%s,"type":"sale","timestamp":%d,"payload":{"slotNumber":%d,'
            '"productId":%s,"quantity":%d,"amount":%d.%02d,"paymentMethod":"%s","transactionId":%s}}'
            % (json.dumps(machine), ts, coil, json.dumps(product), qty, cents // 100, cents % 100,
               method, json.dumps(txn)))


deliveries = [(l[0], event(l)) for l in lines]
for l in lines:
    r = rnd.random()
    if r < 0.03:  # re-sent: minutes, or 3, 10 or 30 days after the sale
        late = rnd.choice([5 * 60_000, 3 * DAY_MS, 10 * DAY_MS, 30 * DAY_MS])
        deliveries.append((l[0] + late, event(l)))
if a.sorted:
    deliveries.sort(key=lambda d: d[0])
else:
    rnd.shuffle(deliveries)
with open(os.path.join(a.out, "history.jsonl"), "w") as f:
    for _, e in deliveries:
        f.write(e + "\n")


def money(cents):
    return "${:,}.{:02d}".format(cents // 100, cents % 100)


with open(os.path.join(a.out, "export.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Machine", "Trans Date", "Transaction", "Coil", "Product", "Qty", "Line Total", "Type"])
    for l in sorted(lines, key=lambda l: (l[1], l[4], l[2])):
        ts, machine, txn, coil, product, qty, cents, method = l
        t = dt.datetime.fromtimestamp(ts / 1000, dt.timezone.utc)
        stamp = "%d/%d/%d %02d:%02d:%02d" % (t.month, t.day, t.year, t.hour, t.minute, t.second)
        w.writerow([machine, stamp, txn, coil, product, qty, money(cents), method.title()])
print("%d lines, %d deliveries" % (len(lines), len(deliveries)))
