"""`microtask indexes SET`: decode an index set to plain ranges, count it, list it, test it.

The status holds index sets (``succeededIndexes``, ``failedIndexes``) as plain ranges
(``0-9,17``) while they are short, and packed (``z:...``) beyond; this is how to read either:

    kubectl get mtj thumbs -o jsonpath='{.status.failedIndexes}' | microtask indexes - --list

Exit 0; with ``--contains N``, 1 when N is not in the set; 2 for text that is not an index set.
"""

from __future__ import annotations

import argparse
import sys

PROG = "microtask indexes"
EXIT_INVALID = 2
#: Indexes written at once by --list (a range of millions is not one string).
_CHUNK = 65536


def _index(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not an index: {text!r}")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "set",
        metavar="SET",
        help="an index set: ranges like 0-9,17, or a packed z:... / d:... form ('-': stdin)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--count", action="store_true", help="print how many indexes it holds")
    what.add_argument("--list", action="store_true", help="print one index per line")
    what.add_argument(
        "--contains",
        type=_index,
        metavar="N",
        help="print yes or no; exit 0 when N is in the set, 1 when not",
    )


def execute(args: argparse.Namespace) -> int:
    from microtask_runner.indexset import IndexSet

    text = sys.stdin.read() if args.set == "-" else args.set
    try:
        indexes = IndexSet.from_compact(text)
    except ValueError as problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    out = sys.stdout
    try:
        if args.count:
            print(len(indexes), file=out)
        elif args.contains is not None:
            found = args.contains in indexes
            print("yes" if found else "no", file=out)
            return 0 if found else 1
        elif args.list:
            for start, end in indexes.ranges:
                for chunk in range(start, end, _CHUNK):
                    out.write("".join(f"{i}\n" for i in range(chunk, min(end, chunk + _CHUNK))))
        else:
            print(indexes.format(), file=out)
        out.flush()
    except BrokenPipeError:
        from .results import silence_stdout

        silence_stdout()
    return 0
