"""`python -m dominofs.server`: the same options as `dominofs serve`, without the CLI package."""

from __future__ import annotations

import argparse
import logging
import sys

from .main import serve
from .users import USERS_ENV, collect_users, parse_user


def _user(value: str) -> tuple[str, str]:
    try:
        return parse_user(value, where="--user")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dominofs.server", description=__doc__)
    parser.add_argument("--data", required=True, help="directory holding all server state")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument(
        "--user",
        type=_user,
        action="append",
        default=[],
        metavar="NAME:KEY",
        help="a user and key (repeatable); argv is public, so only for throwaway test keys",
    )
    parser.add_argument(
        "--users-file",
        action="append",
        default=[],
        metavar="PATH",
        help=f"NAME:KEY lines, mode 0600 (repeatable); also read from ${USERS_ENV}",
    )
    parser.add_argument("--project", action="append", default=[], metavar="OWNER/NAME")
    parser.add_argument("--no-delete", action="store_true", help="refuse DELETE of files")
    parser.add_argument(
        "--no-v1-blobs",
        action="store_true",
        help="answer the deprecated v1 blob route with 404, as a deployment without it",
    )
    parser.add_argument("--run-time-limit", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument("--faults", default=None, help="fault injection spec (reserved)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        users = collect_users(cli_users=args.user, users_files=args.users_file)
        serve(
            data_dir=args.data,
            bind=args.bind,
            port=args.port,
            users=users,
            projects=args.project,
            no_delete=args.no_delete,
            no_v1_blobs=args.no_v1_blobs,
            run_time_limit=args.run_time_limit,
            faults=args.faults,
        )
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"dominofs serve: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
