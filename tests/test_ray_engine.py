"""``score --engine ray``: the same rows as the local engine, and every nightly guarantee, on a real Ray.

Each Ray run is a real ``cusemo-batch score --engine ray`` subprocess that starts its own local Ray
instance (2 CPUs here), inside a user, network, mount and PID namespace (``unshare -rnpfm``):

* network: the namespace has only a loopback interface (brought up by the launcher below), so no
  test traffic can leave the machine whatever Ray binds to (the engine binds its own instance to
  127.0.0.1 anyway);
* PID: the launcher is the namespace's init; when it exits -- or the driver is SIGKILLed -- the
  kernel kills every Ray process of the run, so no test leaves a raylet behind, and a test kills
  only processes it started.

Skipped where ``ray`` is not installed (``pip install -e '.[ray]'``); without working user
namespaces the tests fail under CI (the network rule cannot be kept) and skip on a developer machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
from demo_calls import assert_same_tables, table, write_bad_inputs

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "calls"
ROLES = "SPEAKER_00=agent,SPEAKER_01=client"
RAY = ("--engine", "ray", "--workers", "2", "--cpus-per-worker", "1")
sys.path.insert(0, str(REPO / "scripts"))
import loopback_netns  # noqa: E402  (scripts/: shared with benchmarks/bench_ray.py)


@pytest.fixture(scope="module", autouse=True)
def isolated_network():
    why = loopback_netns.unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: the Ray tests must run in a loopback-only network namespace")
        pytest.skip(why)


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # never an outside cluster
    return {**env, **(extra or {})}


def cli(*args, env: dict | None = None, ray: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """``cusemo-batch ARGS``; with ``ray``, inside the namespaces (exit 137 when the driver was SIGKILLed)."""
    cmd = [sys.executable, "-m", "cusemo_batch", *map(str, args)]
    if ray:
        cmd = [*loopback_netns.prefix(), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(env), timeout=timeout)


def many_calls(dest: Path, copies: int) -> Path:
    """The demo calls ``copies`` times under other ids (each copy its own call), with calls.csv."""
    dest.mkdir(parents=True)
    lines = (EXAMPLES / "calls.csv").read_text().splitlines()
    meta = [lines[0]]
    for i in range(copies):
        for src in EXAMPLES.iterdir():
            if src.name in ("calls.csv", "LICENCE.md"):
                continue
            target = dest / f"c{i:02d}_{src.name}"
            (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
        meta += [f"c{i:02d}_{line}" for line in lines[1:]]
    (dest / "calls.csv").write_text("\n".join(meta) + "\n")
    return dest


@pytest.fixture(scope="module")
def demo_local(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_local") / "out"
    r = cli("score", EXAMPLES, "--out", out, "--roles", ROLES, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return out


def test_ray_equals_local_on_demo_calls_and_rerun_skips(demo_local, tmp_path):
    out = tmp_path / "out"
    r = cli("score", EXAMPLES, "--out", out, "--roles", ROLES, *RAY, ray=True)
    assert r.returncode == 0, r.stderr
    assert "4 scored, 0 skipped, 0 failed" in r.stdout and "Traceback" not in r.stderr
    assert "2 worker(s) x 1 CPU" in r.stderr
    assert_same_tables(demo_local, out)
    runs = pl.read_parquet(list((out / "runs").rglob("*.parquet")))
    assert runs["providers"].to_list() == ["CPUExecutionProvider"]
    # a rerun scores nothing and changes no byte of the tables
    before = {p: p.read_bytes() for p in out.rglob("*.parquet") if "runs" not in p.parts and "_state" not in p.parts}
    r = cli("score", EXAMPLES, "--out", out, "--roles", ROLES, *RAY, ray=True)
    assert r.returncode == 0 and "0 scored, 4 skipped" in r.stdout, r.stdout + r.stderr
    after = {p: p.read_bytes() for p in out.rglob("*.parquet") if "runs" not in p.parts and "_state" not in p.parts}
    assert before == after
    assert not list(out.rglob(".cusemo-tmp-*"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Good calls and bad inputs of every stage (discover, decode, metadata) in one folder."""
    root = tmp_path_factory.mktemp("mixed") / "calls"
    root.mkdir()
    for n in ("negative_end.flac", "anger_escalation.flac"):
        shutil.copy(EXAMPLES / n, root / n)
    shutil.copytree(EXAMPLES / "steady", root / "steady")
    write_bad_inputs(root)
    (root / "calls.csv").write_text("call_id,date,queue\nnegative_end,2026-11-25,support\n"
                                    "anger_escalation,2026-13-01,billing\nsteady,,sales\n")
    return root


EXPECTED_ERRORS = {
    "empty": "UnreadableAudio", "notaudio": "UnreadableAudio", "nan_samples": "AudioError",
    "too_short": "TooShortError", "all_silence": "NoSpeechError", "three_channels": "ChannelMismatch",
    "rttm_past_end": "RTTMError", "twin": "DuplicateCallId", "anger_escalation": "BadMetadata",
}


def test_ray_equals_local_with_bad_inputs_one_error_row_each(mixed, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    r = cli("score", mixed, "--out", local, "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    r = cli("score", mixed, "--out", remote, *RAY, ray=True)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = table(remote, "errors")
    assert dict(zip(errors["call_id"], errors["error"])) == EXPECTED_ERRORS
    assert errors.height == len(EXPECTED_ERRORS)
    for cid in EXPECTED_ERRORS:  # one log line per bad call, from the driver
        assert sum(f"ERROR   {cid}: " in line for line in r.stderr.splitlines()) == 1, cid
    assert_same_tables(local, remote)
    assert set(table(remote, "calls")["call_id"]) == {"negative_end", "steady"}


def test_ray_with_a_call_list(tmp_path):
    """--manifest on Ray: paths relative to the list, per-speaker rows, a missing file as one error row."""
    lst = tmp_path / "night.jsonl"
    lst.write_text(
        f'{{"call_id": "neg", "files": "{EXAMPLES / "negative_end.flac"}", "queue": "support", "date": "2026-11-25"}}\n'
        f'{{"call_id": "st", "files": {{"agent": "{EXAMPLES / "steady/agent.flac"}", '
        f'"client": "{EXAMPLES / "steady/client.flac"}"}}}}\n'
        f'{{"call_id": "rec", "files": "{EXAMPLES / "recovery.flac"}", "rttm": "{EXAMPLES / "recovery.rttm"}", '
        f'"roles": "{ROLES}"}}\n'
        '{"call_id": "gone", "files": "nowhere/gone.wav"}\n')
    local, remote = tmp_path / "local", tmp_path / "ray"
    for out, flags in ((local, ("--device", "cpu")), (remote, RAY)):
        r = cli("score", "--manifest", lst, "--out", out, *flags, ray=out == remote)
        assert r.returncode == 1 and "3 scored, 0 skipped, 1 failed of 4 calls" in r.stdout, r.stdout + r.stderr
    assert_same_tables(local, remote)
    err = table(remote, "errors")
    assert err.select("call_id", "stage", "error").rows() == [("gone", "discover", "MissingFile")]
    assert err["file"][0] == str(tmp_path / "nowhere" / "gone.wav")


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (this test's own subprocess tree), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def night32(tmp_path_factory) -> tuple[Path, Path]:
    """32 calls and their rows from the local engine: the reference every kill test converges to."""
    root = many_calls(tmp_path_factory.mktemp("night32") / "calls", 8)
    out = tmp_path_factory.mktemp("night32_local") / "out"
    r = cli("score", root, "--out", out, "--roles", ROLES, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return root, out


def test_worker_killed_mid_run_then_rerun_converges(night32, tmp_path):
    root, reference = night32
    out = tmp_path / "out"
    cmd = [*loopback_netns.prefix(), sys.executable, "-m", "cusemo_batch", "score", str(root),
           "--out", str(out), "--roles", ROLES, *RAY, "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and p.poll() is None and time.monotonic() < deadline:
            if len(list(out.glob("calls/date=*/*.parquet"))) >= 2:  # scoring is under way
                workers = [c for c in _descendants(p.pid) if "MapWorker" in _cmdline(c)]
                if workers:
                    killed = workers[0]
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.05)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert killed is not None, "no worker process found to kill while the night ran"
    # Ray restarts the actor and retries its batch (exit 0), or the night stops (exit 6); never a
    # traceback, and what is in OUT is readable
    assert p.returncode in (0, 6), (p.returncode, stderr[-3000:])
    for f in out.rglob("*.parquet"):
        pl.read_parquet(f)
    r = cli("score", root, "--out", out, "--roles", ROLES, *RAY, ray=True)
    assert r.returncode == 0, r.stderr
    assert not list(out.rglob(".cusemo-tmp-*")), "orphaned temp files left"
    assert_same_tables(reference, out)


def test_a_batch_that_kills_its_worker_every_time_ends_the_night_with_exit_6(demo_local, tmp_path):
    """Every worker process dies writing its first call (a crash point): Ray restarts and retries
    until Ray Data sees no progress (shortened here to 15 s); exit 6, one line, whole files; the
    next run completes the night."""
    out = tmp_path / "out"
    env = {"CUSEMO_CRASH_AT": "between_tables:1", "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "15"}
    r = cli("score", EXAMPLES, "--out", out, "--roles", ROLES, *RAY, env=env, ray=True)
    assert r.returncode == 6, (r.returncode, r.stderr[-3000:])
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "the Ray scoring failed" in errors[0], r.stderr[-3000:]
    for f in out.rglob("*.parquet"):
        pl.read_parquet(f)
    runs = pl.read_parquet(list((out / "runs").rglob("*.parquet")))
    assert runs["exit_code"].to_list() == [6]
    r = cli("score", EXAMPLES, "--out", out, "--roles", ROLES, *RAY, ray=True)
    assert r.returncode == 0, r.stderr
    assert_same_tables(demo_local, out)


def test_driver_killed_then_rerun_converges(night32, tmp_path):
    root, reference = night32
    out = tmp_path / "out"
    # the driver dies right after recording its 5th call; the namespace takes the Ray processes with it
    r = cli("score", root, "--out", out, "--roles", ROLES, *RAY, env={"CUSEMO_CRASH_AT": "after_call:5"}, ray=True)
    assert r.returncode == 128 + signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    r = cli("score", root, "--out", out, "--roles", ROLES, *RAY, ray=True)
    assert r.returncode == 0, r.stderr
    scored = int(r.stdout.split(" scored")[0].split()[-1])
    assert 0 < scored < 32, r.stdout  # the first run's recorded calls were skipped
    assert not list(out.rglob(".cusemo-tmp-*"))
    assert_same_tables(reference, out)


def test_an_existing_cluster_by_address(demo_local, tmp_path):
    """The cluster an operator runs (``ray start --head``, the head listening on 127.0.0.1 here)."""
    out = tmp_path / "out"
    ray_cli = Path(sys.executable).parent / "ray"
    score = [sys.executable, "-m", "cusemo_batch", "score", str(EXAMPLES), "--out", str(out), "--roles", ROLES,
             "--engine", "ray", "--address", "127.0.0.1:6390"]
    # the head's session files in a short private folder (its Unix sockets must fit 107 characters),
    # not /tmp/ray; its token is this test's (a new head would otherwise write ~/.ray/auth_token);
    # the namespace ends the head's processes with the script
    session = Path(tempfile.mkdtemp(prefix="cusemo-test-", dir="/tmp"))
    script = (f"{ray_cli} start --head --node-ip-address 127.0.0.1 --port 6390 --num-cpus 2 --include-dashboard false "
              f"--disable-usage-stats --temp-dir {session} > {tmp_path / 'ray_start.log'} 2>&1 && "
              f"{subprocess.list2cmdline(score)}")
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex(), "TMPDIR": str(session)}
    try:
        r = subprocess.run([*loopback_netns.prefix(), "bash", "-c", script], capture_output=True,
                           text=True, env=_env(env), timeout=300)
    finally:
        shutil.rmtree(session, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr + (tmp_path / "ray_start.log").read_text()
    assert "Ray (127.0.0.1:6390): 2 worker(s) x 1 CPU" in r.stderr  # --workers defaults to what the cluster holds
    assert_same_tables(demo_local, out)


def test_full_disk_on_a_worker_is_exit_5_and_nothing_is_written_outside_out(demo_local, tmp_path):
    """A worker meets ENOSPC (a 96 KiB tmpfs as OUT): one error line, exit 5, whole files; and the run
    -- Ray's session files, its auth token, onnxruntime's side files -- leaves HOME and TMPDIR empty."""
    out, copy, home, tmp = tmp_path / "small", tmp_path / "copy", tmp_path / "home", tmp_path / "tmp"
    for d in (out, copy, home, tmp):
        d.mkdir()
    score = [sys.executable, "-m", "cusemo_batch", "score", str(EXAMPLES), "--out", str(out), "--roles", ROLES, *RAY]
    script = (f"mount -t tmpfs -o size=96k tmpfs {out} && {subprocess.list2cmdline(score)}; rc=$?; "
              f"cp -a {out}/. {copy}/; exit $rc")
    env = {"HOME": str(home), "TMPDIR": str(tmp)}
    r = subprocess.run([*loopback_netns.prefix(), "bash", "-c", script], capture_output=True,
                       text=True, env={k: v for k, v in _env(env).items() if k != "XDG_CACHE_HOME"}, timeout=300)
    assert r.returncode == 5, (r.returncode, r.stderr[-3000:])
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    # (the cause is "No space left on device" when the write that fails is the file's open or close;
    # polars words an ENOSPC in the middle of a Parquet body as a thrift transport error)
    assert len(errors) == 1 and f"{out}: cannot write" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    for f in copy.rglob("*.parquet"):  # whatever was written is whole
        pl.read_parquet(f)
    assert not list(home.rglob("*")), list(home.rglob("*"))
    assert not list(tmp.iterdir()), list(tmp.rglob("*"))[:5]
    # the same OUT with room: the night completes to the rows of a clean run
    r = cli("score", EXAMPLES, "--out", copy, "--roles", ROLES, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert_same_tables(demo_local, copy)


def test_engine_problems_are_exit_2_before_out_is_touched(tmp_path):
    out = tmp_path / "out"
    r = cli("score", EXAMPLES, "--out", out, "--workers", "2")  # a Ray flag without --engine ray
    assert r.returncode == 2 and "needs --engine ray" in r.stderr, r.stderr
    r = cli("score", EXAMPLES, "--out", out, "--engine", "ray", "--address", "127.0.0.1:1", ray=True)
    assert r.returncode == 2 and "cannot connect to Ray at 127.0.0.1:1" in r.stderr, r.stderr
    r = cli("score", EXAMPLES, "--out", out, "--engine", "ray", "--workers", "3", ray=True)  # 2 CPUs here
    assert r.returncode == 2 and "does not fit the Ray cluster" in r.stderr, r.stderr
    r = cli("score", EXAMPLES, "--out", out, "--engine", "ray", "--model", tmp_path / "none.onnx", ray=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not out.exists()


def test_local_engine_never_imports_ray(tmp_path):
    code = ("import sys\nfrom cusemo_batch.cli import main\n"
            f"try:\n    main(['score', {str(EXAMPLES)!r}, '--out', {str(tmp_path / 'out')!r}, '--device', 'cpu'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'ray' not in sys.modules, 'the local engine imported ray'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
