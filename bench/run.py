"""`make bench`: every stage's benchmark, each printing ratios against a baseline measured in the same run.

Each module bench/<stage>.py has `main(argv) -> int`; `python -m bench.run [STAGE...]` runs them in order.
"""

from __future__ import annotations

import importlib
import sys

BENCHES = ["html", "normalize", "filter", "dedup", "pack", "scaling", "train", "generate"]


def main(argv: list[str]) -> int:
    wanted = argv or BENCHES
    failed = 0
    for name in wanted:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bench.{name}":
                print(f"== {name}: no benchmark yet ==")
                continue
            raise
        print(f"== {name} ==", flush=True)
        failed |= module.main([])
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
