"""Smoke test for an installed rdsproxy wheel: compiled codecs, clean contents, every module, one proxied query.

Run it with the interpreter of a fresh virtual environment that has only the wheel (and its dependencies)
installed, from outside the source tree and with no C compiler on PATH; scripts/build_wheels.sh does that.
It needs nothing beyond the wheel: the client speaks the PostgreSQL protocol with rdsproxy's own sans-IO
modules over a plain socket. Exits 0 and prints one summary line, or prints what failed and exits 1.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.machinery
import importlib.metadata
import os
import pkgutil
import platform
import shutil
import struct
import sys
import sysconfig
import time
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rdsproxy.testing import PostgresServer

QUERY = "SELECT 6 * 7 AS answer"
EXPECTED_ANSWER = b"42"
ROUND_TRIP_TIMEOUT = 60.0
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc")
# Files a wheel must not carry: Cython sources and the C they generate belong in the sdist only.
SOURCE_SUFFIXES = (".c", ".pyx", ".pxd")


class SmokeFailure(Exception):
    """A check of the installed wheel failed; the message says which and why."""


def check_no_compiler() -> None:
    """The wheel must work where nothing could compile it, so a compiler on PATH would make the test moot."""
    names = list(COMPILERS)
    configured = (sysconfig.get_config_var("CC") or "").split()
    if configured:
        names.append(configured[0])
    found = {name: shutil.which(name) for name in names}
    present = {name: path for name, path in found.items() if path}
    if present:
        raise SmokeFailure(f"a C compiler is on PATH, so this would not prove the wheel needs none: {present}")


def check_installed_copy(package: ModuleType) -> str:
    """rdsproxy must come from the venv's site-packages, not from a source tree that happens to be on sys.path."""
    site_dirs = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    location = os.path.realpath(os.path.dirname(package.__file__ or ""))
    if os.path.dirname(location) not in site_dirs:
        raise SmokeFailure(f"rdsproxy was imported from {location}, not from site-packages {sorted(site_dirs)}")
    return location


def elf_section_names(path: str) -> list[str]:
    """Names of the sections of an ELF file (stdlib only: readelf is binutils, which may be absent)."""
    with open(path, "rb") as file:
        data = file.read()
    if data[:4] != b"\x7fELF":
        raise SmokeFailure(f"{path} is not an ELF file")
    is_64_bit = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if is_64_bit:
        section_offset, entry_size, count, names_index = struct.unpack_from(order + "Q10xHHH", data, 0x28)
        entry = struct.Struct(order + "I20xQQ")  # sh_name, ..., sh_offset, sh_size
    else:
        section_offset, entry_size, count, names_index = struct.unpack_from(order + "I10xHHH", data, 0x20)
        entry = struct.Struct(order + "I12xII")
    headers = [entry.unpack_from(data, section_offset + i * entry_size) for i in range(count)]
    _, names_offset, names_size = headers[names_index]
    names = data[names_offset : names_offset + names_size]
    return [names[name : names.index(b"\0", name)].decode() for name, _, _ in headers]


def check_compiled_codecs() -> list[str]:
    """COMPILED is True and every compiled codec is a stripped extension module; returns their file names."""
    from rdsproxy import _codec

    if not _codec.COMPILED or "compiled" not in _codec.IMPLEMENTATIONS:
        raise SmokeFailure(
            "rdsproxy._codec.COMPILED is False: the compiled codecs did not load "
            f"(RDSPROXY_NO_EXTENSIONS={os.environ.get('RDSPROXY_NO_EXTENSIONS')!r})"
        )
    if _codec.ACTIVE.name != "compiled":
        raise SmokeFailure(f"the active codec set is {_codec.ACTIVE.name!r}, not the compiled one")
    codec_set = _codec.IMPLEMENTATIONS["compiled"]
    modules = [value for value in codec_set if isinstance(value, ModuleType)]
    if not modules:
        raise SmokeFailure("IMPLEMENTATIONS['compiled'] holds no modules")
    file_names = []
    for module in modules:
        spec = module.__spec__
        origin = spec.origin if spec is not None else None
        is_extension = spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
        if not is_extension or not origin or not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            raise SmokeFailure(f"{module.__name__} is not an extension module (loaded from {origin})")
        unstripped = [name for name in elf_section_names(origin) if name.startswith(".debug") or name == ".symtab"]
        if unstripped:
            raise SmokeFailure(f"{os.path.basename(origin)} still carries debug sections or symbols: {unstripped}")
        file_names.append(os.path.basename(origin))
    return file_names


def check_wheel_contents() -> int:
    """The installed files (the wheel's RECORD) hold no Cython or C sources; returns how many files there are."""
    files = importlib.metadata.files("rdsproxy") or []
    if not files:
        raise SmokeFailure("the rdsproxy distribution lists no installed files")
    sources = [str(path) for path in files if str(path).endswith(SOURCE_SUFFIXES)]
    if sources:
        raise SmokeFailure(f"the wheel carries source files it should not: {sources}")
    return len(files)


def import_every_module(package: ModuleType) -> int:
    """Import every rdsproxy module, so syntax or typing this Python lacks fails here rather than for a user."""
    failures = []
    names = [package.__name__]
    names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # every failure is reported, with its module
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if failures:
        listing = "\n  ".join(failures)
        raise SmokeFailure(f"modules that do not import on Python {platform.python_version()}:\n  {listing}")
    entry_points = [ep for ep in importlib.metadata.distribution("rdsproxy").entry_points if ep.name == "rdsproxy"]
    if not entry_points:
        raise SmokeFailure("the rdsproxy console script is missing from the wheel's entry points")
    entry_points[0].load()
    return len(names)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One backend message: (type byte, body)."""
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], await reader.readexactly(length - 4)


def first_column(data_row: bytes) -> bytes:
    """The first column of a DataRow body (a NULL reads as b"NULL")."""
    (column_count,) = struct.unpack_from("!h", data_row, 0)
    if column_count < 1:
        raise SmokeFailure("DataRow without columns")
    (length,) = struct.unpack_from("!i", data_row, 2)
    return b"NULL" if length < 0 else data_row[6 : 6 + length]


async def query_through_proxy(host: str, port: int, user: str, password: str, database: str) -> bytes:
    """Log in through the proxy (SCRAM), run QUERY, return the first column of its only row."""
    from rdsproxy.protocol.pg import messages
    from rdsproxy.protocol.pg.auth import BackendAuthenticator

    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(messages.startup_message({"user": user, "database": database}))
        authenticator = BackendAuthenticator(user, password)
        while True:
            kind, body = await read_message(reader)
            if kind == b"E":
                raise SmokeFailure(f"login through the proxy failed: {messages.parse_error_fields(body)}")
            if kind == b"R":
                reply = authenticator.handle(body)
                if reply:
                    writer.write(reply)
            elif kind == b"Z":
                break
        if not authenticator.ok:
            raise SmokeFailure("the proxy sent ReadyForQuery before AuthenticationOk")
        writer.write(messages.query(QUERY))
        rows = []
        while True:
            kind, body = await read_message(reader)
            if kind == b"E":
                raise SmokeFailure(f"{QUERY!r} failed through the proxy: {messages.parse_error_fields(body)}")
            if kind == b"D":
                rows.append(first_column(body))
            elif kind == b"Z":
                break
        writer.write(messages.terminate())
        await writer.drain()
    finally:
        writer.close()
    if len(rows) != 1:
        raise SmokeFailure(f"{QUERY!r} returned {len(rows)} rows through the proxy, expected 1")
    return rows[0]


async def proxied_round_trip(server: PostgresServer) -> bytes:
    from rdsproxy.testing import proxy_config_for, running_proxy

    async with running_proxy(proxy_config_for(server)) as proxy:
        host, port = proxy.address()
        answer = query_through_proxy(host, port, server.app_user, server.app_password, server.app_database)
        return await asyncio.wait_for(answer, ROUND_TRIP_TIMEOUT)


def check_proxy_round_trip() -> float:
    """Throwaway PostgreSQL, an in-process proxy in front of it, one query through it; returns seconds taken."""
    from rdsproxy.testing import start_postgres

    started = time.monotonic()
    server = start_postgres(max_connections=10)
    try:
        answer = asyncio.run(proxied_round_trip(server))
    finally:
        server.stop()
    if answer != EXPECTED_ANSWER:
        raise SmokeFailure(f"{QUERY!r} through the proxy returned {answer!r}, expected {EXPECTED_ANSWER!r}")
    return time.monotonic() - started


def main() -> int:
    version = f"CPython {platform.python_version()}"
    try:
        check_no_compiler()
        import rdsproxy

        location = check_installed_copy(rdsproxy)
        extension_files = check_compiled_codecs()
        file_count = check_wheel_contents()
        module_count = import_every_module(rdsproxy)
        seconds = check_proxy_round_trip()
    except SmokeFailure as failure:
        print(f"wheel smoke FAILED on {version}: {failure}", file=sys.stderr)
        return 1
    print(
        f"wheel smoke OK on {version}: rdsproxy {rdsproxy.__version__} from {location}; "
        f"{len(extension_files)} stripped extension modules ({', '.join(extension_files)}); "
        f"{file_count} installed files, no C/Cython sources; {module_count} modules import; "
        f"{QUERY!r} through the proxy -> {EXPECTED_ANSWER.decode()} ({seconds:.1f} s with server start)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
