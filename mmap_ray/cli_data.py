"""`mmap-ray data push|stage|check`: a dataset folder in object storage, staged to each node that uses it."""

from __future__ import annotations

import argparse

from .data.remote import THREADS, push, read_manifest, stage


def cmd_data_push(args: argparse.Namespace) -> int:
    manifest = push(args.folder, args.dest, threads=args.threads)
    print(f"pushed {len(manifest.files)} files ({manifest.total_bytes:,} bytes) and their manifest to {args.dest}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.uri)
    folders = ", ".join(manifest.folders()) or "none"
    print(f"{args.uri}: {len(manifest.files)} files, {manifest.total_bytes:,} bytes; top-level folders: {folders}")
    return 0


def cmd_data_stage(args: argparse.Namespace) -> int:
    staged = stage(args.uri, threads=args.threads)
    print(f"{staged.root}  ({staged.downloaded} files downloaded, {staged.kept} already staged)")
    return 0


def add_data(sub, help: str) -> None:
    p = sub.add_parser(
        "data",
        help=help,
        description="A dataset folder in object storage (s3://, gs://, or an S3-protocol server with "
        "?endpoint_override=HOST:PORT&scheme=http) serves as --root on every node: each node copies it to its "
        "local disk cache ($MMAP_RAY_DATA_CACHE, else ~/.cache/mmap-ray/datasets) the first time a run there "
        "loads it, checking every file against the manifest that `push` wrote.",
    )
    data = p.add_subparsers(dest="data_command", required=True)
    push = data.add_parser(
        "push",
        help="upload a local dataset folder and its manifest (path, size and sha256 of every file)",
        description="Upload every file below FOLDER to URI, then URI/mmap-ray-manifest.json (last, so an "
        "interrupted push leaves no manifest and is refused, never half read).",
    )
    push.add_argument("folder", help="the local dataset folder, e.g. ~/data/OfficeHomeDataset")
    push.add_argument("dest", help="where it goes, e.g. s3://my-bucket/datasets/OfficeHomeDataset")
    stage = data.add_parser(
        "stage",
        help="copy a pushed dataset to this node's cache now (runs do it themselves on first use)",
        description="Download the dataset at URI into this node's cache, checking every file against its "
        "manifest, and print the local folder. Downloads nothing when a complete, matching copy is there.",
    )
    check = data.add_parser(
        "check",
        help="read a pushed dataset's manifest only: its files, size and top-level folders (downloads no data)",
        description="Read URI/mmap-ray-manifest.json and summarise it; fails, in one line, if the dataset was "
        "not pushed there (or its push did not finish).",
    )
    for q in (stage, check):
        q.add_argument("uri", help="the URI the dataset was pushed to")
    for q in (push, stage):
        q.add_argument("--threads", type=int, default=THREADS, help="transfers at once")
    push.set_defaults(func=cmd_data_push)
    stage.set_defaults(func=cmd_data_stage)
    check.set_defaults(func=cmd_data_check)
