"""`python -m nonllama.train ARGS` runs `nonllama train ARGS`: the entry point each worker of
`torch.distributed.run` executes, so `torchrun --nproc-per-node 2 -m nonllama.train ...` works."""

from __future__ import annotations

import sys


def main() -> None:
    from nonllama.cli import app

    app(["train", *sys.argv[1:]], prog_name="nonllama")


if __name__ == "__main__":
    main()
