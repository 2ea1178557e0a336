"""Sample from a checkpoint written by ``train.py`` (char-rnn's ``sample.lua``)::

    python examples/char_rnn/sample.py cv/lm_lstm_epoch20.00_1.3857.npz \\
        --temperature 0.8 --prime "ROMEO:" --length 2000 --seed 1 --top-k 0
"""

from __future__ import annotations

import argparse
import sys

from rnnc.commands import sample as sample_command


def main(argv: list[str] | None = None) -> int:
    """Parse ``rnnc sample``'s options and print the sample."""
    parser = argparse.ArgumentParser(prog="char_rnn/sample.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sample_command.add_parser(sub)
    args = parser.parse_args(["sample", *(sys.argv[1:] if argv is None else argv)])
    return sample_command.run(args)


if __name__ == "__main__":
    sys.exit(main())
