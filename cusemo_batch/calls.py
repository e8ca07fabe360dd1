"""Discover the calls in a folder and the audio source of every speaker (see ../shared/formats.md §2).

Layouts, detected per call (or forced with ``layout``) and mixed freely in one folder:

======================  =============================================  ===============================
layout                  files                                          speakers
======================  =============================================  ===============================
``stereo``              ``CALL.wav`` with 2 channels                   channel order from ``channels``
``per-speaker``         ``CALL/client.flac`` + ``CALL/agent.flac``     from the file names
                        or ``CALL_client.wav`` + ``CALL_agent.wav``
``rttm``                ``CALL.wav`` + ``CALL.rttm``                   RTTM labels, mapped with ``roles``
``mono``                ``CALL.wav``                                   one speaker, ``speaker_name``
======================  =============================================  ===============================

Discovery never raises for bad input: each problem becomes a :class:`CallError` (the nightly job
turns it into one row of the ``errors`` table) and the other calls go on.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from .audio import AUDIO_SUFFIXES
from .metadata import CallMetadata, MetadataError, read_metadata  # noqa: F401 (re-exported)
from .rttm import RTTMError, RTTMSegment, read_rttm  # noqa: F401 (RTTMSegment re-exported)
from .text import first_line

DEFAULT_ROLES = ("client", "agent")
LAYOUTS = ("auto", "stereo", "per-speaker", "rttm", "mono")


@dataclass(frozen=True)
class SpeakerSource:
    """Where one speaker's audio comes from."""

    speaker: str
    path: Path
    channel: int | None = None  # stereo: which channel
    rttm: Path | None = None  # mono + RTTM: keep only these labels' regions
    rttm_labels: tuple[str, ...] = ()


@dataclass
class Call:
    call_id: str
    layout: str
    files: tuple[Path, ...]
    speakers: dict[str, SpeakerSource] = field(default_factory=dict)
    unmapped_labels: tuple[str, ...] = ()  # RTTM labels no role mapping names (stored under the label)


@dataclass(frozen=True)
class CallError:
    """One call that cannot be scored: becomes one row of the errors table."""

    call_id: str
    file: str
    stage: str
    error: str
    message: str


@dataclass(frozen=True)
class DiscoveryOptions:
    """How files become calls and tracks become speakers (``cusemo-batch score`` layout options).

    ``layout``: auto | stereo | per-speaker | rttm | mono; ``channels``: the roles of a stereo
    file's channels in order; ``speaker_name``: the role of a mono call's one voice; ``roles``:
    RTTM label -> role; ``speakers``: the roles to score (empty: all found); ``strict_roles``: an
    RTTM label no role names is an error, not a speaker; ``follow_symlinks``: walk into linked
    folders.

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> d = cb.DiscoveryOptions(channels=("client", "agent"), speakers=("client",))
    >>> sorted(d.role_names)
    ['agent', 'client']
    """

    layout: str = "auto"
    channels: tuple[str, ...] = ("agent", "client")
    speaker_name: str = "client"
    roles: dict[str, str] = field(default_factory=dict)  # RTTM label -> role
    speakers: tuple[str, ...] = ()  # roles to score; empty = all found
    strict_roles: bool = False  # an RTTM label that no role mapping names is an error, not a speaker
    follow_symlinks: bool = False

    @property
    def role_names(self) -> set[str]:
        return set(DEFAULT_ROLES) | set(self.channels) | set(self.roles.values()) | {self.speaker_name}

    def validate(self) -> None:
        """Raise ValueError (one line) for options that would make every call fail or mislabel it.

        Checked before a run touches its output folder: a typo in ``speakers`` would otherwise turn
        every call into a ``NoWantedSpeaker`` error.
        """
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if not self.channels or any(not c for c in self.channels) or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be distinct non-empty role names, got {','.join(self.channels)!r}")
        if any(not k or not v for k, v in self.roles.items()):
            raise ValueError("roles must map non-empty RTTM labels to non-empty role names")
        unknown = [s for s in self.speakers if s not in self.role_names]
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(map(repr, unknown))} in speakers; known roles: "
                             f"{', '.join(sorted(self.role_names))} (RTTM roles come from --roles LABEL=ROLE)")


def _walk(root: Path, follow_symlinks: bool, errors: list[CallError]) -> list[Path]:
    """All regular files under ``root``; every file or folder that is skipped becomes an error row.

    * symlinks leaving ``root`` are refused unless followed explicitly;
    * with ``follow_symlinks``, a folder whose real path was already walked (a link to a parent,
      a cycle) is reported once and not entered again;
    * FIFOs, sockets and devices are never opened (reading a FIFO blocks forever, ``/dev/zero``
      never ends): only regular files are calls;
    * a folder that cannot be listed (permissions) is an error row, not a silent gap.
    """
    root_real = root.resolve()
    out: list[Path] = []

    def unreadable(e: OSError) -> None:
        where = Path(e.filename) if e.filename else root
        errors.append(CallError(where.name, str(where), "discover", "UnreadableFolder",
                                f"cannot list folder ({e.strerror or type(e).__name__}); its calls are not scored"))

    seen = {root_real}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks, onerror=unreadable):
        d = Path(dirpath)
        for name in sorted(dirnames):
            p = d / name
            if not p.is_symlink():
                continue
            if not follow_symlinks and not _inside(p, root_real):
                errors.append(CallError(p.name, str(p), "discover", "SymlinkOutside",
                                        f"symlinked folder points outside CALLS ({_real(p)}); use --follow-symlinks"))
                dirnames.remove(name)
                continue
            real = _real(p)
            if real is None or real in seen or real in d.resolve().parents or real == d.resolve():
                errors.append(CallError(p.name, str(p), "discover", "SymlinkLoop",
                                        f"symlinked folder leads back to a folder already searched ({real})"))
                dirnames.remove(name)
                continue
            seen.add(real)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = d / name
            problem = _file_problem(p, root_real, follow_symlinks)
            if problem is False:
                continue
            if problem is not None:
                errors.append(problem)
                continue
            out.append(p)
    return sorted(out)


def _file_problem(p: Path, root_real: Path, follow_symlinks: bool) -> CallError | None | bool:
    """Why the file ``p`` is not a call candidate: an error row, False to pass over it silently (a
    special file that does not look like audio), or None when it is a regular file to consider."""
    if p.is_symlink():
        try:
            os.path.realpath(p, strict=True)
        except FileNotFoundError:
            return CallError(_stem(p), str(p), "discover", "BrokenSymlink", "symlink target does not exist")
        except OSError:  # ELOOP
            return CallError(_stem(p), str(p), "discover", "SymlinkLoop", "symlink loop (the link leads back to itself)")
        if not follow_symlinks and not _inside(p, root_real):
            return CallError(_stem(p), str(p), "discover", "SymlinkOutside",
                             f"symlink points outside CALLS ({_real(p)}); use --follow-symlinks")
    try:
        mode = p.stat().st_mode
    except OSError as e:
        return CallError(_stem(p), str(p), "discover", "UnreadableFile", f"cannot stat ({e.strerror or type(e).__name__})")
    if stat.S_ISREG(mode):
        return None
    if p.suffix.lower() in AUDIO_SUFFIXES or p.suffix.lower() in (".rttm", ".csv", ".parquet"):
        kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
        return CallError(_stem(p), str(p), "discover", "NotARegularFile", f"a {kind}, not a file: never opened")
    return False


def _real(p: Path) -> Path | None:
    """The real path of ``p``; None when it cannot be resolved (a symlink loop, a missing target)."""
    try:
        return Path(os.path.realpath(p, strict=True))
    except OSError:
        return None


def _inside(p: Path, root_real: Path) -> bool:
    try:
        p.resolve().relative_to(root_real)
        return True
    except ValueError:
        return False


def _stem(p: Path) -> str:
    return p.name[: -len(p.suffix)] if p.suffix else p.name


def discover(root: str | Path, opts: DiscoveryOptions = DiscoveryOptions()) -> tuple[list[Call], list[CallError]]:
    """Find every call under ``root`` (recursively). Returns the calls and the discovery errors."""
    root = Path(root)
    errors: list[CallError] = []
    files = _walk(root, opts.follow_symlinks, errors)
    roles = opts.role_names
    audio = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    rttms = {(_stem(p), p.parent): p for p in files if p.suffix.lower() == ".rttm"}

    # Group audio files by call id.
    groups: dict[str, list[tuple[Path, str | None]]] = {}
    for p in audio:
        stem = _stem(p)
        role = None
        if opts.layout in ("auto", "per-speaker"):
            if stem.lower() in roles and p.parent != root:
                cid, role = p.parent.name, stem.lower()
            elif "_" in stem and stem.rsplit("_", 1)[1].lower() in roles:
                cid, role = stem.rsplit("_", 1)[0], stem.rsplit("_", 1)[1].lower()
            else:
                cid = stem
        else:
            cid = stem
        groups.setdefault(cid, []).append((p, role))

    calls: list[Call] = []
    for cid in sorted(groups):
        members = groups[cid]
        with_role = [(p, r) for p, r in members if r]
        without = [p for p, r in members if not r]
        if with_role and without or len(without) > 1:
            listing = ", ".join(str(p) for p, _ in members)
            errors.append(CallError(cid, listing, "discover", "DuplicateCallId",
                                    f"{len(members)} files claim call_id {cid!r}: {listing}"))
            continue
        if with_role:
            by_role: dict[str, Path] = {}
            dup = False
            for p, r in with_role:
                if r in by_role:
                    errors.append(CallError(cid, f"{by_role[r]}, {p}", "discover", "DuplicateCallId",
                                            f"two {r} files for call {cid!r}: {by_role[r]} and {p}"))
                    dup = True
                by_role[r] = p
            if dup:
                continue
            call = Call(cid, "per-speaker", tuple(by_role.values()),
                        {r: SpeakerSource(r, p) for r, p in sorted(by_role.items())})
        else:
            call = single_file_call(cid, without[0], rttms.get((cid, without[0].parent)), opts, errors)
            if call is None:
                continue
        if opts.speakers:
            call.speakers = {r: s for r, s in call.speakers.items() if r in opts.speakers}
            if not call.speakers:
                errors.append(CallError(cid, str(call.files[0]), "discover", "NoWantedSpeaker",
                                        f"no speaker of the wanted role(s) {', '.join(opts.speakers)}"))
                continue
        calls.append(call)
    return calls, errors


def calls_from_files(files: list[str | Path], opts: DiscoveryOptions = DiscoveryOptions()
                     ) -> tuple[list[Call], list[CallError]]:
    """One call per audio file, in the given order (stereo, mono + a sibling ``CALL.rttm``, or mono).

    The file list form of :func:`discover` (audinterface's ``process_files``): the call id is the
    file name without its suffix; two files with one id are a ``DuplicateCallId`` error, a missing
    or non-audio path an error row, like in a folder.
    """
    calls: list[Call] = []
    errors: list[CallError] = []
    seen: dict[str, Path] = {}
    for f in map(Path, files):
        cid = _stem(f)
        if not f.is_file():
            errors.append(CallError(cid, str(f), "discover", "MissingFile", "no such file"))
            continue
        if f.suffix.lower() not in AUDIO_SUFFIXES:
            errors.append(CallError(cid, str(f), "discover", "NotAudio",
                                    f"suffix {f.suffix or '(none)'} is not an audio format ({', '.join(sorted(AUDIO_SUFFIXES))})"))
            continue
        if cid in seen:
            errors.append(CallError(cid, f"{seen[cid]}, {f}", "discover", "DuplicateCallId",
                                    f"2 files claim call_id {cid!r}: {seen[cid]}, {f}"))
            continue
        seen[cid] = f
        rttm = f.with_suffix(".rttm")
        call = single_file_call(cid, f, rttm if rttm.is_file() else None, opts, errors)
        if call is not None and opts.speakers:
            call.speakers = {r: s for r, s in call.speakers.items() if r in opts.speakers}
            if not call.speakers:
                errors.append(CallError(cid, str(f), "discover", "NoWantedSpeaker",
                                        f"no speaker of the wanted role(s) {', '.join(opts.speakers)}"))
                continue
        if call is not None:
            calls.append(call)
    return calls, errors


def single_file_call(cid: str, path: Path, rttm: Path | None, opts: DiscoveryOptions,
                     errors: list[CallError]) -> Call | None:
    """The call in one audio file (stereo, mono + ``rttm``, or mono), or None with an error appended.

    Shared by folder discovery, :func:`calls_from_files` and ``--manifest`` lists, so a file gives the
    same speakers whichever way it was found.
    """
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/PermissionError...
        kind = "PermissionError" if isinstance(e, PermissionError) or not os.access(path, os.R_OK) else "UnreadableAudio"
        msg = "permission denied" if kind == "PermissionError" else f"not readable as audio ({first_line(e)})"
        errors.append(CallError(cid, str(path), "discover", kind, msg))
        return None
    layout = opts.layout
    if layout == "auto":
        layout = "rttm" if rttm is not None and info.channels == 1 else ("stereo" if info.channels > 1 else "mono")
    if layout == "stereo":
        if info.channels != len(opts.channels):
            errors.append(CallError(cid, str(path), "discover", "ChannelMismatch",
                                    f"{info.channels} channels but the channel mapping names {len(opts.channels)} "
                                    f"({','.join(opts.channels)}); set --channels"))
            return None
        return Call(cid, "stereo", (path,), {r: SpeakerSource(r, path, channel=i) for i, r in enumerate(opts.channels)})
    if info.channels != 1:
        errors.append(CallError(cid, str(path), "discover", "ChannelMismatch",
                                f"{info.channels} channels; layout {layout} needs mono"))
        return None
    if layout == "rttm":
        if rttm is None:
            errors.append(CallError(cid, str(path), "discover", "MissingRTTM", "layout rttm but no CALL.rttm next to the audio"))
            return None
        try:
            segments = read_rttm(rttm)
        except RTTMError as e:
            errors.append(CallError(cid, str(rttm), "discover", "BadRTTM", str(e)))
            return None
        labels = sorted({s.label for s in segments})
        by_role: dict[str, list[str]] = {}
        unmapped = []
        for label in labels:
            if label in opts.roles:
                role = opts.roles[label]
            elif label.lower() in opts.role_names:
                role = label.lower()
            else:
                role = label
                unmapped.append(label)
            by_role.setdefault(role, []).append(label)
        if unmapped and opts.strict_roles:
            errors.append(CallError(cid, str(rttm), "discover", "UnmappedRTTMLabel",
                                    f"RTTM label(s) {', '.join(unmapped)} not mapped to a role by --roles "
                                    f"(e.g. --roles {unmapped[0]}=client)"))
            return None
        return Call(cid, "rttm", (path, rttm), {r: SpeakerSource(r, path, rttm=rttm, rttm_labels=tuple(ls))
                                                 for r, ls in sorted(by_role.items())}, tuple(unmapped))
    return Call(cid, "mono", (path,), {opts.speaker_name: SpeakerSource(opts.speaker_name, path)})
