"""Document numbers: per series (a document type: invoice, act, contract) and year, each taken once.

    allocate(store, keys, "invoice", 2027, step_key) → 15    (shown by `number_format`: «2027/015»)

A series' year is one Redis hash, `<prefix>docnum:<series>:<year>`: the field `#last` is the last
number given, and every document's own field (the step's key: event id | rule | action index) is
the number it got. One Lua script reads the step's field or, when it has none, takes the next
number and writes both, atomically: a retried job, a re-run after a crash, or two workers
holding the same job all get the number first given, and no number is skipped or given twice.

Why Redis and not the history database: it is the store every step's "done" marks live in (its
durability is theirs: AOF, README "Redis"), the allocation is one round trip with no transaction
to hold, and the database is optional (SQLite beside the config when none is set). The hashes
have no TTL: a number must outlive every retry. Bound: one field per document made plus one
counter per series and year (a few bytes each; 10 000 documents a year ≈ 1 MB), dropped by
hand (`DEL`) when a year's numbering is closed and archived.
"""
from __future__ import annotations

import re
from typing import Any

SERIES = re.compile(r"^[\w.-]{1,40}$")
LAST = "#last"
SCRIPT = """
local got = redis.call('HGET', KEYS[1], ARGV[1])
if got then return tonumber(got) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if n < tonumber(ARGV[3]) then
  n = tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[2], n)
end
redis.call('HSET', KEYS[1], ARGV[1], n)
return n
"""


def key(keys: Any, series: str, year: int) -> str:
    if not SERIES.match(series):
        raise ValueError(f"series {series!r}: expected a plain name (letters, digits, _ . -)")
    return keys("docnum", series, str(int(year)))


def allocate(store: Any, keys: Any, series: str, year: int, owner: str, start: int = 1) -> int:
    """The number of the document `owner` (a step's key) in `series` and `year`: the one it was
    given before, else the next (at least `start`: a numbering carried on from another system)."""
    return int(store.eval(SCRIPT, 1, key(keys, series, year), owner, LAST, int(start)))


def peek(store: Any, keys: Any, series: str, year: int) -> int:
    """The last number given in `series` and `year` (0: none yet)."""
    return int(store.hget(key(keys, series, year), LAST) or 0)


def formatted(number: int, year: int, pattern: str = "{year}/{seq:03d}") -> str:
    """«2027/015» from 15 and 2027 by `pattern` ({seq} the number, {year} the year, {yy} its last
    two digits)."""
    try:
        return pattern.format(seq=number, year=year, yy=f"{year % 100:02d}")
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"number_format {pattern!r}: expected {{seq}}, {{year}}, {{yy}} "
                         f"(e.g. \"{{year}}/{{seq:03d}}\"): {exc}") from None
