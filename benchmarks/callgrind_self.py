"""Self cost per function in a callgrind dump, per unit of work: where a work_per_unit profile spends its instructions.

`python -m benchmarks.callgrind_self DUMP UNITS [--top N] [--callers FUNCTION]`

`callgrind_annotate` shows only inclusive costs for a Python 3.11 process's dumps (the interpreter's frames form
cycles it folds together), which hides what each function costs by itself. This reads the dump's cost lines
directly: a function's own lines count for it, the lines after a `calls=` line (the callee's inclusive cost) do
not. `--callers` lists instead who calls a function and what those calls cost inclusively. UNITS divides every
figure, e.g. the 2,000 transactions of `work_per_unit`'s `-c 1` unit (its dump `callgrind.<pid>.out.2` with
`--keep`).
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


def costs(path: str, callee: Optional[str] = None) -> Counter[str]:
    """Self instructions per function, or (with `callee`) the inclusive cost of calls to it, per caller."""
    names = _Names()
    result: Counter[str] = Counter()
    function = called = ""
    after_calls = False
    with open(path) as dump:
        for line in dump:
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
                if after_calls:
                    after_calls = False
                    if callee is not None and callee in called:
                        result[function] += int(fields[1])
                elif callee is None:
                    result[function] += int(fields[1])
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", help="a callgrind.<pid>.out.<n> file")
    parser.add_argument("units", type=float, help="units of work the dump covers (figures are divided by it)")
    parser.add_argument("--top", type=int, default=40, help="rows to print (default 40)")
    parser.add_argument("--callers", metavar="FUNCTION", help="callers of functions whose name contains FUNCTION")
    options = parser.parse_args(argv)
    table = costs(options.dump, options.callers)
    if options.callers is None:
        print(f"self instructions per unit, {sum(table.values()) / options.units:,.0f} in all")
    else:
        print(f"calls to *{options.callers}*, inclusive instructions per unit, by caller")
    for function, cost in table.most_common(options.top):
        print(f"{cost / options.units:10,.0f}  {function[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
