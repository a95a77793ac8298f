"""The simulated shop's fixed vocabulary and record builders (records exactly as the contract)."""

from __future__ import annotations

import json
import random
from typing import Any

from syncd.sim.clock import format_ms

PRODUCTS: tuple[tuple[str, str, float], ...] = (
    ("sku_dog_food", "Dog Food", 29.995),
    ("sku_cat_food", "Cat Food", 24.5),
    ("sku_bird_seed", "Bird Seed", 7.25),
    ("sku_fish_flakes", "Fish Flakes", 5.99),
    ("sku_chew_toy", "Chew Toy", 9.99),
    ("sku_leash", "Leash", 14.0),
    ("sku_collar", "Collar", 11.5),
    ("sku_litter", "Cat Litter", 18.75),
    ("sku_hamster_wheel", "Hamster Wheel", 21.0),
    ("sku_aquarium", "Aquarium", 89.9),
    ("sku_dog_bed", "Dog Bed", 49.95),
    ("sku_scratch_post", "Scratching Post", 34.0),
)
FIRST_NAMES = ("John", "Mary", "Ana", "Li", "Omar", "Zoe", "Ivan", "Priya", "Kofi", "Lena")
LAST_NAMES = ("Doe", "Smith", "Garcia", "Chen", "Haddad", "Novak", "Okafor", "Rao", "Berg")
ORDER_STATUSES = ("placed", "approved", "shipped", "completed", "cancelled")
OPEN_STATUSES = frozenset({"placed", "approved", "shipped"})
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


# One shared encoder: json.dumps builds a new one per call when given separators.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ITEM_COUNTS = (1, 1, 1, 2, 2, 3)


def encode(record: dict[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode()


def base36(n: int) -> str:
    out = []
    while True:
        n, digit = divmod(n, 36)
        out.append(_BASE36[digit])
        if n == 0:
            return "".join(reversed(out))


def product_for_sku(index: int) -> tuple[str, str, float]:
    """The index-th inventory item: the named catalog first, then numbered extras."""
    if index < len(PRODUCTS):
        return PRODUCTS[index]
    return (f"sku_item_{index:06d}", f"Pet Supply {index}", round(3.0 + (index % 97) * 0.75, 2))


# Preloading a million orders encodes them with a template instead of json: every value in
# it is a number or a catalog/generated string that needs no escaping, and floats use repr
# exactly as json does. tests/sim/test_sim_catalog.py pins it to encode(order(...)).
_ORDER_TEMPLATE = (
    '{"id":%d,"customer":"%s","status":"%s","total":%r,"currency":"USD","items":[%s],'
    '"createdAt":"%s","updatedAt":"%s","version":%d}'
)
_ITEM_FRAGMENTS = [
    [
        (_ENCODER.encode({"product": product, "quantity": q, "unitPrice": price}), q * price)
        for q in (1, 2, 3, 4)
    ]
    for _, product, price in PRODUCTS
]


def random_items_json(rng: random.Random) -> tuple[str, float]:
    """The JSON text inside an order's items array, and the order total."""
    draw = rng.random
    parts = []
    total = 0.0
    for _ in range(_ITEM_COUNTS[int(draw() * len(_ITEM_COUNTS))]):
        fragment, subtotal = _ITEM_FRAGMENTS[int(draw() * len(PRODUCTS))][int(draw() * 4)]
        parts.append(fragment)
        total += subtotal
    return ",".join(parts), round(total, 2)


def order_bytes(
    oid: int,
    customer: str,
    status: str,
    items_json: str,
    total: float,
    created_ms: int,
    updated_ms: int,
    version: int,
) -> bytes:
    """encode(order(...)) for a plain ASCII customer, fast."""
    return (
        _ORDER_TEMPLATE
        % (oid, customer, status, total, items_json, format_ms(created_ms), format_ms(updated_ms), version)
    ).encode()


def items_and_total(rng: random.Random) -> tuple[list[dict[str, Any]], float]:
    items = []
    total = 0.0
    draw = rng.random
    for _ in range(_ITEM_COUNTS[int(draw() * len(_ITEM_COUNTS))]):
        _, product, price = PRODUCTS[int(draw() * len(PRODUCTS))]
        quantity = 1 + int(draw() * 4)
        items.append({"product": product, "quantity": quantity, "unitPrice": price})
        total += quantity * price
    return items, round(total, 2)


def order(
    oid: int,
    customer: str,
    status: str,
    items: list[dict[str, Any]],
    total: float,
    created_ms: int,
    updated_ms: int,
    version: int,
) -> dict[str, Any]:
    return {
        "id": oid,
        "customer": customer,
        "status": status,
        "total": total,
        "currency": "USD",
        "items": items,
        "createdAt": format_ms(created_ms),
        "updatedAt": format_ms(updated_ms),
        "version": version,
    }


def customer(cid: str, email: str, name: str, created_ms: int, version: int = 1) -> dict[str, Any]:
    stamp = format_ms(created_ms)
    return {
        "id": cid,
        "email": email,
        "name": name,
        "createdAt": stamp,
        "updatedAt": stamp,
        "version": version,
    }


def inventory(
    sku: str, product: str, quantity: int, threshold: int, updated_ms: int, version: int
) -> dict[str, Any]:
    return {
        "id": sku,
        "product": product,
        "quantity": quantity,
        "threshold": threshold,
        "updatedAt": format_ms(updated_ms),
        "version": version,
    }


def person(rng: random.Random, n: int) -> tuple[str, str]:
    """(email, name) for the n-th customer; n keeps emails unique."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return f"{first.lower()}.{last.lower()}{n}@example.com", f"{first} {last}"
