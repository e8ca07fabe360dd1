"""``--manifest``: the night's calls listed in a file, instead of found by walking a folder.

A large night (50 000 calls on shared storage) is usually already listed somewhere -- the
recording platform's export, a data-lake query -- and walking millions of files on a network
share to find it again is slow. One row per call, in CSV (UTF-8 or UTF-16, like ``calls.csv``),
Parquet or JSON Lines (one object per line), chosen by the file's suffix:

=============  ======================================================================================
column         meaning
=============  ======================================================================================
``call_id``    required, unique, non-empty
``files``      required. One audio file: its layout is detected as in a folder (2 channels = stereo,
               split by ``channels``; mono + ``rttm`` = RTTM speakers; mono = one speaker,
               ``--speaker-name``). Several files, separated by ``;`` (JSON / Parquet: a list, or
               an object ``{"agent": PATH, "client": PATH}``): per-speaker files, each file's
               speaker written as ``ROLE=PATH`` or taken from its name as in a folder
               (``client.flac``, ``CALL_agent.wav``); ``ROLE=PATH`` on its own is a one-speaker call.
``rttm``       optional: the RTTM of a mono file
``roles``      optional: this call's RTTM labels to roles, ``SPEAKER_00=agent,SPEAKER_01=client``
               (JSON / Parquet: also an object); applied over ``--roles``
``channels``   optional: the speaker of each channel of this call's stereo file, ``agent,client``
               (default ``--channels``)
anything else  metadata, as in ``calls.csv``: joined to the ``calls`` table; ``date`` picks the partition
=============  ======================================================================================

Relative paths are relative to the list's folder. ``ROLE=PATH`` is read as a role only when ROLE is
a known role name (``client``, ``agent``, ``--channels``, ``--roles`` values, this row's ``roles``
values, ``--speaker-name``), so a hive-style path like ``date=2026-12-01/x.wav`` stays a path.

Errors follow the folder rules. The list as a whole must be usable -- readable, parseable, with
``call_id`` and ``files`` columns, every id once and non-empty, no reserved column (``call_date``)
-- or the run stops with exit code 2 and the file and line (:class:`CallListError`, a
:class:`~cusemo_batch.calls.MetadataError`) before OUT is touched. A row whose files are missing,
unreadable or not audio, or whose speakers cannot be told, is that call's error row (stage
``discover``) and the night goes on.
"""

from __future__ import annotations

import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from .calls import Call, CallError, DiscoveryOptions, SpeakerSource, single_file_call
from .metadata import RESERVED_METADATA, CallMetadata, MetadataError
from .text import first_line, read_csv_rows

REQUIRED = ("call_id", "files")
STRUCTURE = ("call_id", "files", "rttm", "roles", "channels")  # the other columns are metadata
FORMATS = (".csv", ".parquet", ".jsonl")
_ROLE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_PARALLEL_FROM = 64  # rows; file checks and headers read in threads beyond this (network shares)


class CallListError(MetadataError):
    """A call list that cannot be used as a whole (one line, with file and line): exit code 2."""


@dataclass(frozen=True)
class CallRow:
    """One row of a call list, parsed but not yet checked against the file system."""

    call_id: str
    line: int
    files: tuple[tuple[str | None, str], ...]  # (role or None, path as written)
    rttm: str = ""
    roles: tuple[tuple[str, str], ...] = ()
    channels: tuple[str, ...] = ()
    problem: str = ""  # a cell this row cannot be scored with: becomes its error row


@dataclass
class CallList:
    """A parsed call list: its rows and the metadata they carry."""

    source: Path
    rows: list[CallRow]
    metadata: CallMetadata | None = None
    base: Path = field(default_factory=Path)

    def discover(self, opts: DiscoveryOptions = DiscoveryOptions()) -> tuple[list[Call], list[CallError]]:
        """The calls and the per-row errors (stage ``discover``), in list order."""
        one = partial(row_call, opts=opts, base=self.base)
        if len(self.rows) >= _PARALLEL_FROM:
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="call-list") as pool:
                found = list(pool.map(one, self.rows))
        else:
            found = [one(r) for r in self.rows]
        calls = [c for c, _ in found if c is not None]
        errors = [e for _, errs in found for e in errs]
        return calls, errors


# ------------------------------------------------------------------------------------- reading
def read_call_list(path: str | Path) -> CallList:
    """Parse and check a call list as a whole (CallListError, before OUT is touched)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CallListError(f"{path}: unknown call list format {path.suffix or '(no suffix)'!r}; "
                            f"use {', '.join(FORMATS)}")
    if not path.is_file():
        raise CallListError(f"{path}: no such file")
    reader = {".csv": _read_csv, ".parquet": _read_parquet, ".jsonl": _read_jsonl}[suffix]
    header, records = reader(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CallListError(f"{path}:1: no {' or '.join(missing)} column (columns: {', '.join(header)[:200]})")
    reserved = [h for h in header if h in RESERVED_METADATA]
    if reserved:
        raise CallListError(f"{path}:1: column {reserved[0]!r} is reserved (the calls table names the `date` "
                            f"column so); rename it")
    meta_columns = [h for h in header if h not in STRUCTURE]
    rows: list[CallRow] = []
    meta: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for line, rec in records:
        cid = _text(rec.get("call_id")).strip()
        if not cid:
            raise CallListError(f"{path.name}:{line}: empty call_id")
        if cid in lines:
            raise CallListError(f"{path.name}:{line}: call_id {cid!r} is listed twice (first on line {lines[cid]})")
        lines[cid] = line
        rows.append(_row(cid, line, rec))
        meta[cid] = {"call_id": cid, **{c: _text(rec.get(c)).strip() for c in meta_columns}}
    metadata = CallMetadata(path, ("call_id", *meta_columns), meta, lines) if meta_columns else None
    return CallList(path, rows, metadata, path.parent.absolute())


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    table = read_csv_rows(path, CallListError)
    if not table:
        raise CallListError(f"{path}:1: empty file (no header)")
    header = [h.strip() for h in table[0]]
    _check_header(path, header)
    records = []
    for i, values in enumerate(table[1:]):
        line = i + 2
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise CallListError(f"{path.name}:{line}: {len(values)} fields, the header has {len(header)}")
        records.append((line, dict(zip(header, values))))
    return header, records


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:
        raise CallListError(f"{path}: cannot read ({first_line(e)})") from None
    header = list(df.columns)
    _check_header(path, header)
    return header, [(i + 2, r) for i, r in enumerate(df.iter_rows(named=True))]


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CallListError(f"{path}: cannot read ({getattr(e, 'strerror', None) or first_line(e)})") from None
    header: list[str] = []
    records = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise CallListError(f"{path.name}:{line}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise CallListError(f"{path.name}:{line}: a JSON object per line expected, got {type(obj).__name__}")
        header += [k for k in obj if k not in header]
        records.append((line, obj))
    if not records:
        raise CallListError(f"{path}:1: no rows")
    return header, records


def _check_header(path: Path, header: list[str]) -> None:
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or any(not h for h in header):
        raise CallListError(f"{path}:1: column names must be non-empty and distinct "
                            f"({', '.join(map(repr, dupes)) or 'an empty name'})")


def _text(v: Any) -> str:
    """A metadata cell as text: strings as they are, other scalars as JSON writes them, null as ""."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, int, float)):
        return json.dumps(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)  # a date from Parquet: ISO


def _row(cid: str, line: int, rec: dict[str, Any]) -> CallRow:
    """The structural cells of one record; a cell that cannot be read is the row's ``problem``."""
    try:
        files = _files(rec.get("files"))
        roles = _pairs(rec.get("roles"), "roles")
        channels = _names(rec.get("channels"), "channels")
    except ValueError as e:
        return CallRow(cid, line, (), problem=f"line {line}: {e}")
    rttm = _text(rec.get("rttm")).strip()
    problem = "" if files else f"line {line}: no file in the files column"
    return CallRow(cid, line, files, rttm, roles, channels, problem)


def _files(cell: Any) -> tuple[tuple[str | None, str], ...]:
    if cell is None:
        return ()
    if isinstance(cell, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in cell.items()):
            raise ValueError("files: an object of ROLE: PATH strings expected")
        return tuple((k.strip(), v.strip()) for k, v in cell.items() if v.strip())
    if isinstance(cell, (list, tuple)):
        if not all(isinstance(v, str) for v in cell):
            raise ValueError("files: a list of paths (strings) expected")
        items = [v.strip() for v in cell]
    elif isinstance(cell, str):
        items = [v.strip() for v in cell.split(";")]
    else:
        raise ValueError(f"files: a path, a list or an object expected, got {type(cell).__name__}")
    return tuple((None, v) for v in items if v)


def _pairs(cell: Any, name: str) -> tuple[tuple[str, str], ...]:
    if cell is None or cell == "":
        return ()
    if isinstance(cell, dict):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in cell.items()]
    elif isinstance(cell, str):
        pairs = []
        for item in filter(None, (s.strip() for s in cell.split(","))):
            if "=" not in item:
                raise ValueError(f"{name}: {item!r} is not LABEL=ROLE")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v.strip()))
    else:
        raise ValueError(f"{name}: LABEL=ROLE,... or an object expected, got {type(cell).__name__}")
    if any(not k or not v for k, v in pairs):
        raise ValueError(f"{name}: empty label or role")
    return tuple(pairs)


def _names(cell: Any, name: str) -> tuple[str, ...]:
    if cell is None or cell == "":
        return ()
    items = cell.split(",") if isinstance(cell, str) else cell if isinstance(cell, (list, tuple)) else None
    if items is None or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name}: ROLE,ROLE or a list expected")
    names = tuple(v.strip() for v in items)
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{name}: roles must be distinct and non-empty, got {','.join(names)!r}")
    return names


# ----------------------------------------------------------------------------------- discovery
def row_call(row: CallRow, opts: DiscoveryOptions, base: Path) -> tuple[Call | None, list[CallError]]:
    """The call of one row, or its error rows (stage ``discover``); never raises for bad input."""
    cid = row.call_id
    if row.problem:
        return None, [CallError(cid, "", "discover", "BadCallListRow", row.problem)]
    opts = replace(opts, roles={**opts.roles, **dict(row.roles)}, channels=row.channels or opts.channels)
    entries = [_split_role(role, text, opts) for role, text in row.files]
    paths = [(role, _resolve(base, text)) for role, text in entries]
    errors = [e for _, p in paths if (e := _file_problem(cid, p)) is not None]
    rttm = _resolve(base, row.rttm) if row.rttm else None
    if rttm is not None and (e := _file_problem(cid, rttm)) is not None:
        errors.append(e)
    if errors:
        return None, errors
    if len(paths) == 1 and paths[0][0] is None:
        call = single_file_call(cid, paths[0][1], rttm, opts, errors)
    else:
        call = _per_speaker_call(cid, paths, opts, errors)
    if call is not None and opts.speakers:
        call.speakers = {r: s for r, s in call.speakers.items() if r in opts.speakers}
        if not call.speakers:
            errors.append(CallError(cid, str(call.files[0]), "discover", "NoWantedSpeaker",
                                    f"no speaker of the wanted role(s) {', '.join(opts.speakers)}"))
            call = None
    return call, errors


def _split_role(role: str | None, text: str, opts: DiscoveryOptions) -> tuple[str | None, str]:
    """``client=/a/b.wav`` -> ("client", "/a/b.wav") when ``client`` is a known role; else a path."""
    if role is not None:
        return role.lower(), text
    head, sep, tail = text.partition("=")
    if sep and _ROLE.match(head) and head.lower() in opts.role_names:
        return head.lower(), tail.strip()
    return None, text


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _file_problem(cid: str, p: Path) -> CallError | None:
    """Missing, not a regular file (a FIFO is never opened: the night cannot hang on it), unreadable."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return CallError(cid, str(p), "discover", "MissingFile", "no such file")
    except OSError as e:
        return CallError(cid, str(p), "discover", "UnreadableFile", f"cannot stat ({e.strerror or type(e).__name__})")
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
        return CallError(cid, str(p), "discover", "NotARegularFile", f"{kind}, not a file: never opened")
    if not os.access(p, os.R_OK):
        return CallError(cid, str(p), "discover", "PermissionError", "permission denied")
    return None


def _per_speaker_call(cid: str, paths: list[tuple[str | None, Path]], opts: DiscoveryOptions,
                      errors: list[CallError]) -> Call | None:
    if opts.layout not in ("auto", "per-speaker"):
        errors.append(CallError(cid, str(paths[0][1]), "discover", "LayoutMismatch",
                                f"{len(paths)} files with speakers, but layout {opts.layout} reads one file"))
        return None
    by_role: dict[str, Path] = {}
    for role, p in sorted(paths, key=lambda rp: str(rp[1])):
        role = role or _role_from_name(p, opts)
        if role is None:
            errors.append(CallError(cid, str(p), "discover", "UnknownSpeaker",
                                    f"the speaker of {p.name} is not in its name (client.flac, CALL_agent.wav); "
                                    f"write ROLE={p}"))
            return None
        if role in by_role:
            errors.append(CallError(cid, f"{by_role[role]}, {p}", "discover", "DuplicateSpeaker",
                                    f"two {role} files for call {cid!r}: {by_role[role]} and {p}"))
            return None
        by_role[role] = p
    return Call(cid, "per-speaker", tuple(by_role.values()),
                {r: SpeakerSource(r, p) for r, p in sorted(by_role.items())})


def _role_from_name(p: Path, opts: DiscoveryOptions) -> str | None:
    """The folder rule: ``client.flac`` or ``CALL_client.wav`` name their speaker."""
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    roles = opts.role_names
    if stem.lower() in roles:
        return stem.lower()
    if "_" in stem and stem.rsplit("_", 1)[1].lower() in roles:
        return stem.rsplit("_", 1)[1].lower()
    return None
