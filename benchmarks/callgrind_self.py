"""Self cost per function in a callgrind dump, per unit of work: where a work_per_unit profile spends its instructions.

`python -m benchmarks.callgrind_self DUMP UNITS [--top N] [--callers FUNCTION] [--event Ir|D1mr|I1mr|...]`

`callgrind_annotate` shows only inclusive costs for a Python 3.11 process's dumps (the interpreter's frames form
cycles it folds together), which hides what each function costs by itself. This reads the dump's cost lines
directly: a function's own lines count for it, the lines after a `calls=` line (the callee's inclusive cost) do
not. `--callers` lists instead who calls a function and what those calls cost inclusively. UNITS divides every
figure, e.g. the 2,000 transactions of `work_per_unit`'s `-c 1` unit (its dump `callgrind.<pid>.out.2` with
`--keep`). `--event` picks another of the dump's costs, such as the L1 misses of a `--cache-sim=yes` run.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import Optional

_COMPRESSED = re.compile(r"\((\d+)\)(?: (.*))?")


class _Names:
    """callgrind's name compression: `(id) name` defines an id, a later `(id)` refers to it."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, str], str] = {}

    def resolve(self, kind: str, token: str) -> str:
        match = _COMPRESSED.match(token)
        if match is None:
            return token
        key = (kind, match.group(1))
        if match.group(2):
            self._names[key] = match.group(2)
        return self._names.get(key, token)


def costs(path: str, callee: Optional[str] = None, event: str = "Ir") -> Counter[str]:
    """Self cost per function, or (with `callee`) the inclusive cost of calls to it, per caller.

    `event` is one of the dump's events: Ir (instructions), or with `--cache-sim=yes` also D1mr, D1mw, I1mr, ...
    """
    names = _Names()
    result: Counter[str] = Counter()
    function = called = ""
    after_calls = False
    column = 1  # cost lines are "position cost1 cost2 ..."; trailing zero costs are left out
    with open(path) as dump:
        for line in dump:
            if line.startswith("events:"):
                events = line.split()[1:]
                if event not in events:
                    raise ValueError(f"event {event!r} is not in this dump (it has {', '.join(events)})")
                column = 1 + events.index(event)
                continue
            head, _, rest = line.rstrip("\n").partition("=")
            if head in ("fn", "cfn"):
                name = names.resolve("fn", rest)
                if head == "fn":
                    function = name
                else:
                    called = name
            elif head in ("ob", "cob"):
                names.resolve("ob", rest)
            elif head in ("fl", "fi", "fe", "cfl", "cfi"):
                names.resolve("fl", rest)
            elif head == "calls":
                after_calls = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                fields = line.split()
                if len(fields) < 2:
                    continue
                cost = int(fields[column]) if column < len(fields) else 0
                if after_calls:
                    after_calls = False
                    if callee is not None and callee in called:
                        result[function] += cost
                elif callee is None:
                    result[function] += cost
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", help="a callgrind.<pid>.out.<n> file")
    parser.add_argument("units", type=float, help="units of work the dump covers (figures are divided by it)")
    parser.add_argument("--top", type=int, default=40, help="rows to print (default 40)")
    parser.add_argument("--callers", metavar="FUNCTION", help="callers of functions whose name contains FUNCTION")
    parser.add_argument(
        "--event",
        default="Ir",
        help="the cost to show: Ir (instructions, the default) or, in a --cache-sim=yes dump, D1mr, D1mw, I1mr, ...",
    )
    options = parser.parse_args(argv)
    try:
        table = costs(options.dump, options.callers, options.event)
    except ValueError as exc:
        parser.error(str(exc))
    digits = 0 if options.event == "Ir" else 2  # a miss count per unit is often a fraction
    if options.callers is None:
        print(f"self {options.event} per unit, {sum(table.values()) / options.units:,.{digits}f} in all")
    else:
        print(f"calls to *{options.callers}*, inclusive {options.event} per unit, by caller")
    for function, cost in table.most_common(options.top):
        print(f"{cost / options.units:10,.{digits}f}  {function[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
