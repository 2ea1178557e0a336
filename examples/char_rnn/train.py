"""Train a character-level language model as Karpathy's char-rnn does, with rnnc.

Run from anywhere; every option is ``rnnc train``'s (char-rnn's names and defaults)::

    python examples/char_rnn/train.py                          # tiny-shakespeare if present
    python examples/char_rnn/train.py --cell gru --rnn-size 256 --dropout 0.25
    python examples/char_rnn/sample.py cv/lm_lstm_epoch20.00_1.3857.npz --prime "ROMEO:"

Without ``--data`` it trains on tiny-shakespeare when the project's shared data
folder holds it (``../shared/data/tinyshakespeare.txt`` beside the repository, read in
place), and otherwise on the English text that ships with Python. See README.md
beside this file for the results of char-rnn's configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnc.commands import train as train_command

#: Where the project keeps tiny-shakespeare (outside the repository; never copied in).
SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"


def main(argv: list[str] | None = None) -> int:
    """Parse ``rnnc train``'s options, default ``--data`` to tiny-shakespeare, train."""
    parser = argparse.ArgumentParser(prog="char_rnn/train.py")
    sub = parser.add_subparsers(dest="command", required=True)
    train_command.add_parser(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    if "data" not in vars(args) and "resume" not in vars(args) and SHAKESPEARE.is_file():
        args.data = str(SHAKESPEARE)
    return train_command.run(args)


if __name__ == "__main__":
    sys.exit(main())
