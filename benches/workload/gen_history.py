#!/usr/bin/env python3
"""A months-long sales history shaped like a real operator's export, in two forms.

usage: gen_history.py OUT_DIR [--machines 20] [--days 182] [--seed 7] [--sorted] [--locations]

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

--locations: demand shaped as a real fleet's, for the forecast backtest, and a registry
  OUT_DIR/registry.jsonl  one location per machine, with its type (office, hospital, airport,
                          gym, other), and the machine with its coils.
  OUT_DIR/holidays.txt    the public holidays the offices keep (one date a line), for
                          `vendflow forecast backtest --holidays`.
  OUT_DIR/expected.csv    machine, coil, day (YYYY-MM-DD), the units the generator expects the
                          coil to sell that day (the mean it draws from): the best any forecast
                          of the mean could say, for the backtest's noise floor.
  Each location type has its weekday profile (an office sells little at weekends and on public
  holidays, an airport peaks on Mondays and Fridays) and its volume (the fleet simulator's
  rates); each machine its own volume around its type's (log-normal),
  a slight variation of its type's profile, a slow trend over the months; each coil its
  popularity, which changes on the day its product is swapped (a third of the coils, once);
  drinks (coils 101-124) sell more in summer. Daily transactions are Poisson.
"""
import argparse, csv, datetime as dt, json, math, os, random

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--machines", type=int, default=20)
p.add_argument("--days", type=int, default=182)
p.add_argument("--seed", type=int, default=7)
p.add_argument("--sorted", action="store_true")
p.add_argument("--locations", action="store_true")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
rnd = random.Random(a.seed)
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
DAY_MS = 86_400_000

lines = []  # (ts, machine, txn, coil, product, qty, amount_cents, method)
registry = []
expected = []  # (machine, coil, day, expected units)
CART = [1, 1, 1, 2, 3]  # coils a customer picks (a coil picked twice is one line)
QTY = [1, 1, 1, 1, 2, 3]

# Mean 1 over the week, Monday first.
PROFILES = {
    "office": [1.30, 1.35, 1.35, 1.30, 1.10, 0.12, 0.08],
    "hospital": [1.05, 1.05, 1.00, 1.00, 1.00, 0.95, 0.95],
    "airport": [1.20, 0.85, 0.85, 0.95, 1.25, 0.85, 1.05],
    "gym": [1.25, 1.15, 1.20, 1.10, 0.85, 0.75, 0.70],
    "other": [0.90, 0.90, 0.95, 1.00, 1.15, 1.20, 0.90],
}
# Transactions a day, the fleet simulator's rates by location type over a week
# (firmware/src/fleet.rs `sales_rate`); each machine's volume varies around its type's.
BASE = {"office": 38.0, "hospital": 56.0, "airport": 114.0, "gym": 55.0, "other": 48.0}
TYPES = ["office"] * 35 + ["hospital"] * 20 + ["airport"] * 15 + ["gym"] * 20 + ["other"] * 10
# US federal holidays of 2024-2025 (offices nearly closed).
HOLIDAYS = {dt.date(*d) for d in [
    (2024, 1, 1), (2024, 1, 15), (2024, 2, 19), (2024, 5, 27), (2024, 6, 19), (2024, 7, 4),
    (2024, 9, 2), (2024, 10, 14), (2024, 11, 11), (2024, 11, 28), (2024, 12, 25),
    (2025, 1, 1), (2025, 1, 20), (2025, 2, 17), (2025, 5, 26), (2025, 6, 19), (2025, 7, 4)]}


def poisson(lam):
    # Knuth's method in pieces of at most 30 (exp(-lam) underflows for large lam).
    n = 0
    while lam > 0:
        step = min(lam, 30.0)
        lam -= step
        limit, prod = math.exp(-step), rnd.random()
        while prod > limit:
            n += 1
            prod *= rnd.random()
    return n


def shaped_machine(m):
    machine = "VM-%03d" % (m + 1)
    kind = rnd.choice(TYPES)
    location = "loc-%03d" % (m + 1)
    coils = sorted(rnd.sample(range(101, 149), 20))
    price = {c: 5 * rnd.randrange(20, 80) for c in coils}
    base = BASE[kind] * rnd.lognormvariate(0, 0.5)  # transactions a day
    profile = [w * rnd.uniform(0.9, 1.1) for w in PROFILES[kind]]
    mean = sum(profile) / 7
    profile = [w / mean for w in profile]
    growth = rnd.uniform(-0.4, 0.4)  # per year
    popularity = {c: rnd.lognormvariate(0, 0.8) for c in coils}
    swaps = {c: (rnd.randrange(a.days), rnd.lognormvariate(0, 0.8))
             for c in coils if rnd.random() < 1 / 3}
    registry.append({"type": "location", "locationId": location, "clientId": "client-01",
                     "address": "%d Market St, Springfield" % (100 + m),
                     "lat": round(40.6 + rnd.random() * 0.3, 6),
                     "lng": round(-74.1 + rnd.random() * 0.3, 6), "locationType": kind})
    registry.append({"type": "machine", "machineId": machine, "locationId": location,
                     "model": "VX-48", "serialNumber": "SN%05d" % (m + 1),
                     "firmwareVersion": "2.4.1", "status": "active",
                     "slots": [{"slotNumber": c, "productId": "P%d" % c, "price": price[c] / 100,
                                "maxCapacity": 12} for c in coils]})
    txn_no = 0
    for d in range(a.days):
        day = START + dt.timedelta(days=d)
        season = 1 + 0.25 * math.sin(2 * math.pi * (day.timetuple().tm_yday - 100) / 365)
        weights = []
        for c in coils:
            w = popularity[c]
            if c in swaps and d >= swaps[c][0]:
                w = swaps[c][1]
            if c < 125:
                w *= season
            weights.append(w)
        closed = 0.15 if kind == "office" and day.date() in HOLIDAYS else 1.0
        lam = base * profile[day.weekday()] * (1 + growth * d / 365) * closed
        lam = max(0.0, lam)
        total = sum(weights)
        for c, w in zip(coils, weights):
            # A coil's lines per transaction: the chance that one of the picks is it.
            lines_per_txn = sum(1 - (1 - w / total) ** n for n in CART) / len(CART)
            expected.append((machine, c, day.date().isoformat(), lam * lines_per_txn * sum(QTY) / len(QTY)))
        for _ in range(poisson(lam)):
            ts = int(day.timestamp() * 1000) + rnd.randrange(DAY_MS)
            txn_no += 1
            txn = "%s-%06d" % (machine, txn_no)
            method = "card" if rnd.random() < 0.6 else "cash"
            chosen = []
            for _ in range(rnd.choice(CART)):
                c = rnd.choices(coils, weights)[0]
                if c not in chosen:
                    chosen.append(c)
            for coil in chosen:
                qty = rnd.choice(QTY)
                lines.append((ts, machine, txn, coil, "P%d" % coil, qty, price[coil] * qty, method))


for m in range(a.machines):
    if a.locations:
        shaped_machine(m)
        continue
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
if a.locations:
    with open(os.path.join(a.out, "registry.jsonl"), "w") as f:
        for r in registry:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(a.out, "expected.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["machine_id", "slot_number", "day", "expected_units"])
        for machine, coil, day, units in expected:
            w.writerow([machine, coil, day, "%.6f" % units])
    with open(os.path.join(a.out, "holidays.txt"), "w") as f:
        f.write("# US federal holidays (the calendar the generator's offices keep)\n")
        for day in sorted(HOLIDAYS):
            f.write(day.isoformat() + "\n")
print("%d lines, %d deliveries" % (len(lines), len(deliveries)))
