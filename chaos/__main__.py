"""`python -m chaos --minutes N --seed S`: run the soak, print its report; exit 1 on a
violation (the seed and the first violated client's history are printed), 2 when the machine
cannot run it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from chaos.soak import Options, print_outcome, soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--py-clients", type=int, default=12)
    parser.add_argument("--js-clients", type=int, default=6)
    parser.add_argument("--slow-clients", type=int, default=3)
    parser.add_argument(
        "--broadcasts", type=float, default=8.0, help="POST /broadcast a second [8]"
    )
    parser.add_argument("--writes", type=float, default=4.0, help="store writes a second [4]")
    parser.add_argument(
        "--fault-every", type=float, default=4.0, help="mean seconds between faults [4]"
    )
    parser.add_argument("--json", help="write the report to this file too")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, store)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    options = Options(
        minutes=args.minutes,
        seed=args.seed,
        py_clients=args.py_clients,
        js_clients=args.js_clients,
        slow_clients=args.slow_clients,
        broadcasts_per_s=args.broadcasts,
        writes_per_s=args.writes,
        fault_every_s=args.fault_every,
        json_path=args.json,
        keep=args.keep,
    )
    try:
        outcome = asyncio.run(soak(options))
    except RuntimeError as exc:
        print(f"cannot run the soak: {exc}", file=sys.stderr)
        return 2
    print_outcome(outcome)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
