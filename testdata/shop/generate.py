"""Generates the small `shop` sample dataset used by examples/orders_enrich and the tests.

Deterministic (fixed seed); run `python3 testdata/shop/generate.py` to rebuild.
Writes customers.csv, orders/2024-01.jsonl, orders/2024-02.jsonl.gz and
orders/2024-03.jsonl.zst (the zstd file needs the `zstd` command).
"""
import gzip
import json
import os
import random
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(42)

countries = ["DE", "FR", "NL", "US", "JP"]
tiers = ["gold", "silver", "bronze"]
with open(os.path.join(HERE, "customers.csv"), "w") as f:
    f.write("customer_id,name,country,tier,signup_date\n")
    for cid in range(1, 51):
        name = f"Customer {cid:02d}"
        if cid % 7 == 0:
            name = f'"Smith, {cid}"'  # a quoted value with the delimiter
        f.write(f"{cid},{name},{rng.choice(countries)},{rng.choice(tiers)},2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}\n")

os.makedirs(os.path.join(HERE, "orders"), exist_ok=True)
order_id = 1000
for month, ext in [(1, ""), (2, ".gz"), (3, ".zst")]:
    lines = []
    for _ in range(700):
        order_id += 1
        day = rng.randint(1, 28)
        o = {
            "order_id": order_id,
            "customer_id": rng.randint(1, 55),  # 51..55 have no customer row
            "ordered_at": f"2024-{month:02d}-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00",
            "quantity": rng.randint(1, 9),
            "unit_price": round(rng.uniform(1, 200), 2),
        }
        if rng.random() < 0.3:
            o["coupon"] = rng.choice(["WELCOME", "SPRING", "VIP"])
        lines.append(json.dumps(o))
    body = ("\n".join(lines) + "\n").encode()
    path = os.path.join(HERE, "orders", f"2024-{month:02d}.jsonl")
    if ext == ".gz":
        with gzip.GzipFile(path + ext, "wb", mtime=0) as g:
            g.write(body)
    elif ext == ".zst":
        with open(path, "wb") as raw:
            raw.write(body)
        subprocess.run(["zstd", "-q", "-f", "--rm", path, "-o", path + ext], check=True)
    else:
        with open(path, "wb") as raw:
            raw.write(body)
