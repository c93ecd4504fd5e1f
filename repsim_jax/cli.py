"""`repsim` command line (thin: parses, then calls repsim_jax.sweep and the methods)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repsim", description=__doc__)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("layers", help="list the capturable layers of a model")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
