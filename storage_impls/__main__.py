"""``python -m storage_impls upload DIR URL`` publishes a local store to an object store; ``stage URL DIR`` downloads
one to a local folder (for methods that read local files only). Endpoint and credentials: the usual ``AWS_*``
variables (docs/remote.md), or ``--option key=value`` (obstore's configuration keys, e.g. ``endpoint=...``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage_impls", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser("upload", help="copy a local store's files to URL (parallel multipart, sizes checked)")
    upload.add_argument("directory")
    upload.add_argument("url")
    stage = commands.add_parser("stage", help="download the store at URL into a new local folder")
    stage.add_argument("url")
    stage.add_argument("directory")
    for command in (upload, stage):
        command.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a storage option (obstore configuration key), e.g. endpoint=http://127.0.0.1:9000",
        )
    args = parser.parse_args(argv)
    options = dict(item.split("=", 1) for item in args.option)
    from storage_impls import remote  # noqa: PLC0415  (needs the [s3] extra only when run)

    if args.command == "upload":
        files = remote.upload(args.directory, args.url, options)
        print(f"uploaded {len(files)} files, {sum(files.values())} bytes, to {args.url} (sizes verified)")
    else:
        remote.stage(args.url, args.directory, options)
        print(f"staged {args.url} into {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
