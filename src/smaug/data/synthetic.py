"""Synthetic MetaMathQA-schema rows: multi-step arithmetic word problems solved step by step (`... = N` steps, then
`The answer is: N`; ~300-600 characters; ~1.5 % take one calculation, as some real rows do). Row ``i`` depends only
on (seed, i). `two_step_metamath_row` makes the shorter problems `make reproduce` trains a tiny model on."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

_SALT_SYNTH = 3

NAMES = (
    "Janet Carlos Mia Tobias Priya Liam Aisha Mateo Hannah Kenji Olivia Samuel Fatima Noah Grace Diego Chloe Ibrahim "
    "Sofia Marcus Elena Theo Zara Owen"
).split()
SPORTS = "football soccer basketball hockey volleyball baseball".split()
GEAR = [
    ("jersey", 15, 40),
    ("pair of shorts", 8, 25),
    ("pair of socks", 3, 12),
    ("cap", 5, 18),
    ("water bottle", 4, 14),
]
PRODUCE = [
    ("apples", "bag"),
    ("oranges", "box"),
    ("muffins", "tray"),
    ("pencils", "pack"),
    ("eggs", "carton"),
    ("cookies", "tin"),
]
SHOP_ITEMS = [
    ("notebook", 2, 9),
    ("pen", 1, 4),
    ("sandwich", 4, 11),
    ("book", 8, 30),
    ("toy car", 3, 15),
    ("candle", 2, 12),
]
VEHICLES = ["drives", "cycles", "rides the train"]
PLACES = ["the lake house", "her grandmother's farm", "the city", "the beach", "the mountains"]


def _money(rng: random.Random, lo: int, hi: int, cents: bool) -> float | int:
    if cents:
        return round(rng.randint(lo * 4, hi * 4) * 0.25 + rng.choice([0, 0.2, 0.05]), 2)
    return rng.randint(lo, hi)


def _fmt(x: float | int) -> str:
    """Money and counts as MetaMath writes them: integers bare, other values with two decimals."""
    if isinstance(x, int) or float(x).is_integer():
        return str(int(round(x)))
    return f"{x:.2f}"


def _team(rng: random.Random) -> tuple[str, str, str]:
    players = rng.randint(8, 24)
    items = rng.sample(GEAR, 3)
    prices = [_money(rng, lo, hi, cents=rng.random() < 0.5) for _, lo, hi in items]
    per_player = round(sum(prices), 2)
    total = round(per_player * players, 2)
    sport = rng.choice(SPORTS)
    described = ", ".join(f"a ${_fmt(p)} {name}" for (name, _, _), p in zip(items[:2], prices[:2]))
    last = f"a {items[2][0]} priced at ${_fmt(prices[2])}"
    query = (
        f"What is the total cost of purchasing equipment for all {players} players on the {sport} team, "
        f"considering that each player requires {described}, and {last}?"
    )
    response = (
        f"Each player requires {described}, and {last}. "
        f"So the total cost for each player is {' + '.join('$' + _fmt(p) for p in prices)} = ${_fmt(per_player)}. "
        f"Since there are {players} players on the {sport} team, the total cost for all of them is "
        f"{players} * ${_fmt(per_player)} = ${_fmt(total)}."
    )
    return query, response, _fmt(total)


def _change(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    (item1, lo1, hi1), (item2, lo2, hi2) = rng.sample(SHOP_ITEMS, 2)
    n1, n2 = rng.randint(2, 9), rng.randint(2, 6)
    p1, p2 = rng.randint(lo1, hi1), rng.randint(lo2, hi2)
    c1, c2 = n1 * p1, n2 * p2
    spent = c1 + c2
    bill = next(b for b in (20, 50, 100, 200, 500) if b > spent)
    left = bill - spent
    query = (
        f"{name} went to the store with a ${bill} bill. {name} bought {n1} {item1}s that cost ${p1} each and {n2} "
        f"{item2}s that cost ${p2} each. How much change did {name} get back?"
    )
    response = (
        f"{name} bought {n1} {item1}s at ${p1} each, so the {item1}s cost {n1} * ${p1} = ${c1}. "
        f"{name} also bought {n2} {item2}s at ${p2} each, so the {item2}s cost {n2} * ${p2} = ${c2}. "
        f"In total, {name} spent ${c1} + ${c2} = ${spent}. "
        f"Paying with a ${bill} bill, the change is ${bill} - ${spent} = ${left}."
    )
    return query, response, str(left)


def _trip(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    s1, h1, s2, h2 = rng.randint(30, 70), rng.randint(2, 5), rng.randint(20, 60), rng.randint(1, 4)
    d1, d2 = s1 * h1, s2 * h2
    total = d1 + d2
    back = rng.randint(2, 4)
    per_day = total * 2
    week = per_day * back
    verb = rng.choice(VEHICLES)
    place = rng.choice(PLACES)
    query = (
        f"{name} {verb} to {place} at {s1} miles per hour for {h1} hours, then at {s2} miles per hour for "
        f"{h2} hours. If {name} makes the round trip {back} times this month, how many miles is that in total?"
    )
    response = (
        f"In the first part of the trip, {name} travels {s1} miles per hour for {h1} hours, which is "
        f"{s1} * {h1} = {d1} miles. In the second part, {name} travels {s2} miles per hour for {h2} hours, which "
        f"is {s2} * {h2} = {d2} miles. So one way is {d1} + {d2} = {total} miles, and a round trip is "
        f"{total} * 2 = {per_day} miles. Making it {back} times gives {per_day} * {back} = {week} miles."
    )
    return query, response, str(week)


def _baking(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    food, unit = rng.choice(PRODUCE)
    batches, per = rng.randint(3, 12), rng.randint(6, 24)
    made = batches * per
    eaten = rng.randint(1, made // 4)
    kept = made - eaten
    friends = rng.choice([2, 3, 4, 5, 6])
    kept -= kept % friends
    eaten = made - kept
    each = kept // friends
    query = (
        f"{name} has {batches} {unit}s of {food}, each with {per} {food} in it. After {eaten} of the {food} are "
        f"eaten, {name} shares the rest equally among {friends} friends. How many {food} does each friend get?"
    )
    response = (
        f"{name} has {batches} {unit}s with {per} {food} in each, so there are {batches} * {per} = {made} {food} "
        f"in total. After {eaten} are eaten, there are {made} - {eaten} = {kept} {food} left. "
        f"Sharing them equally among {friends} friends, each friend gets {kept} / {friends} = {each} {food}."
    )
    return query, response, str(each)


def _discount(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    item = rng.choice(["jacket", "pair of shoes", "backpack", "lamp", "bicycle helmet", "board game"])
    price = rng.randint(4, 40) * 5
    pct = rng.choice([10, 20, 25, 30, 40, 50])
    off = price * pct / 100
    sale = price - off
    qty = rng.randint(2, 5)
    total = sale * qty
    tax = rng.choice([0, 0, 5, 8])
    query = (
        f"A {item} costs ${price}. During a sale, the store gives a {pct}% discount. {name} buys {qty} of them"
        + (f" and pays a flat ${tax} delivery fee" if tax else "")
        + ". How much does "
        + f"{name} pay in total?"
    )
    response = (
        f"The discount on one {item} is {pct}% of ${price}, which is {pct}/100 * ${price} = ${_fmt(off)}. "
        f"So the sale price of one {item} is ${price} - ${_fmt(off)} = ${_fmt(sale)}. "
        f"For {qty} of them, {name} pays {qty} * ${_fmt(sale)} = ${_fmt(total)}."
    )
    if tax:
        final = total + tax
        response += f" Adding the ${tax} delivery fee, the total is ${_fmt(total)} + ${tax} = ${_fmt(final)}."
        total = final
    return query, response, _fmt(total)


def _savings(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    weekly, weeks = rng.randint(5, 60), rng.randint(4, 30)
    saved = weekly * weeks
    spent = rng.randint(1, saved // 2)
    left = saved - spent
    left -= left % 2
    spent = saved - left
    half = left // 2
    query = (
        f"{name} saves ${weekly} every week for {weeks} weeks. Then {name} spends ${spent} on a gift and gives half "
        f"of the remaining money to a younger brother. How much money does the brother get?"
    )
    response = (
        f"{name} saves ${weekly} per week for {weeks} weeks, so {name} saves a total of {weeks} * ${weekly} = "
        f"${saved}. After spending ${spent} on a gift, {name} has ${saved} - ${spent} = ${left} left. "
        f"Half of the remaining money is ${left} / 2 = ${half}, which is what the younger brother gets."
    )
    return query, response, str(half)


def _one_step(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    food, unit = rng.choice(PRODUCE)
    boxes, per = rng.randint(3, 15), rng.randint(4, 30)
    total = boxes * per
    query = f"{name} buys {boxes} {unit}s of {food}. Each {unit} holds {per} {food}. How many {food} does {name} have?"
    response = (
        f"{name} buys {boxes} {unit}s of {food}, and each {unit} holds {per} {food}. To find the total number of "
        f"{food}, we multiply the number of {unit}s by the number of {food} in each {unit}: {boxes} * {per} = {total}."
        f" Therefore, {name} has {total} {food}."
    )
    return query, response, str(total)


# MetaMath responses usually open by restating the task and close by restating the answer.
_OPENERS = (
    "Let's break this problem down step by step.|To solve this, we need to work through the information one step at "
    "a time.|We can answer this by calculating each quantity in turn.|Let's go through the problem carefully and "
    "compute each part.|First, let's identify what we know and what we need to find."
).split("|")
_CLOSERS = (
    "Therefore, the final answer is {answer}.|So, the answer to the question is {answer}.|Thus, after working through "
    "every step, we get {answer}.|Putting it all together, the result is {answer}."
).split("|")

_TEMPLATES = [_team, _change, _trip, _baking, _discount, _savings]


def synthetic_metamath_row(index: int, seed: int = 0) -> dict[str, Any]:
    """Row ``index`` of the synthetic MetaMathQA-like dataset for ``seed``."""
    rng = random.Random((seed << 40) ^ (_SALT_SYNTH << 36) ^ index)
    template = _one_step if rng.random() < 0.015 else rng.choice(_TEMPLATES)
    query, response, answer = template(rng)
    response = f"{rng.choice(_OPENERS)} {response} {rng.choice(_CLOSERS).format(answer=answer)}"
    if rng.random() < 0.5:
        kind = "GSM_AnsAug"
        response += f"\n#### {answer}\nThe answer is: {answer}"
    else:
        kind = "GSM_Rephrased"
        response += f"\nThe answer is: {answer}"
    return {"query": query, "response": response, "type": kind, "original_question": query}


_SHORT_NAMES = "Mia Liam Aisha Kenji Sofia Noah Priya Theo Zara Owen Elena Diego".split()
_SHORT_ITEMS = "apples pens stickers marbles cookies cards shells books".split()


def two_step_metamath_row(index: int, seed: int = 0) -> dict[str, Any]:
    """Row ``index``: two small calculations, each written ``a op b = c``, then ``The answer is: N`` (and the
    answer in its own field)."""
    rng = random.Random((seed << 32) ^ (0x5EED << 16) ^ index)
    name, item = rng.choice(_SHORT_NAMES), rng.choice(_SHORT_ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        boxes, per = rng.randint(2, 9), rng.randint(2, 9)
        total = boxes * per
        lost = rng.randint(1, total - 1)
        left = total - lost
        query = f"{name} has {boxes} bags with {per} {item} each and gives away {lost}. How many {item} are left?"
        response = (
            f"{name} has {boxes} * {per} = {total} {item}. After giving away {lost}, "
            f"{name} has {total} - {lost} = {left} {item} left."
        )
        answer = left
    elif kind == 1:
        friends, each = rng.randint(2, 5), rng.randint(2, 9)
        total = friends * each
        a = rng.randint(1, total - 1)
        b = total - a
        query = (
            f"{name} finds {a} {item} and then {b} more, and shares them equally among {friends} friends. "
            f"How many {item} does each friend get?"
        )
        response = (
            f"{name} has {a} + {b} = {total} {item}. Shared among {friends} friends, each friend gets "
            f"{total} / {friends} = {each} {item}."
        )
        answer = each
    else:
        price, qty = rng.randint(2, 12), rng.randint(2, 9)
        cost = price * qty
        bill = next(b for b in (20, 50, 100, 200) if b > cost)
        change = bill - cost
        query = (
            f"{name} buys {qty} {item} at ${price} each and pays with a ${bill} bill. How much change does {name} get?"
        )
        response = f"The {item} cost {qty} * ${price} = ${cost}. The change is ${bill} - ${cost} = ${change}."
        answer = change
    return {
        "query": query,
        "response": f"{response}\nThe answer is: {answer}",
        "type": "GSM_synthetic",
        "original_question": query,
        "answer": str(answer),
    }


def generate_synthetic_metamath(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [synthetic_metamath_row(i, seed) for i in range(n)]


def write_synthetic_metamath(path: str | Path, n: int, seed: int = 0, progress: bool = False) -> Path:
    """``n`` synthetic rows as JSON Lines, atomically (same seed, same bytes)."""
    from tqdm.auto import trange

    from axolotl_dpop.atomic import write_jsonl

    rows = trange(n, desc="synthetic rows", unit="row", disable=not progress, mininterval=1.0)
    return write_jsonl(path, (synthetic_metamath_row(i, seed) for i in rows))
