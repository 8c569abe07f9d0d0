#!/usr/bin/env python3
"""Footprint benchmark of agentcom-sidecar (SIDECAR.md, R10).

Builds the release binary, starts the dev hub on a free loopback port, runs release
sidecars against it and measures: launch -> identify_sent / identified, idle memory, idle
CPU, heartbeat round trip, reconnect after a hub restart, SIGTERM -> exit, task latencies
(task_assign -> task_accepted, result file -> task_complete), threads and binary size.
Prints a table with the targets beside the figures and writes everything (every sample
included) to bench/last-run.json.

    python3 bench/run.py [--runs 10] [--settle-seconds 5] [--idle-seconds 10] [--tasks 300] ...

Python 3.11 standard library only; Linux only (/proc, pidfd). Every process it starts is
stopped again, also on error or Ctrl-C; every wait is bounded; only 127.0.0.1 is used.
See bench/README.md for what each figure means and how exact it is.
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import json
import math
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN_NAME = "agentcom-sidecar"
DEFAULT_JSON = REPO / "bench" / "last-run.json"

# R10 targets, and the Node.js sidecar this one replaces, for the table.
TARGETS = {
    "identify_sent_ms": 10.0,
    "idle_rss_kib": 5 * 1024,
    "idle_cpu_percent": 0.05,
    "sigterm_exit_ms": 50.0,
    # R10: "a result reported within milliseconds of the file landing"; judged on the p99.
    "task_latency_p99_ms": 10.0,
}
NODE = {
    "start_to_identified_ms": 282,
    "rss_mb": 54,
    "sigterm_exit_ms": 515,
    # chokidar's awaitWriteFinish: a result file was read once it had not changed for 500 ms.
    "result_settle_ms": 500,
}

# Config of the measured sidecar: debug log (heartbeat lines with rtt_us), 1 s heartbeat,
# fast reconnect. The "realistic idle" sidecar uses the defaults (30 s heartbeat, info log).
FAST = {
    "log_level": "debug",
    "heartbeat_interval_ms": 1000,
    "reconnect_initial_ms": 100,
    "reconnect_max_ms": 1000,
}

# Bounds of every wait, in seconds.
BUILD_TIMEOUT = 3600
HUB_UP_TIMEOUT = 10
EVENT_TIMEOUT = 10
EXIT_TIMEOUT = 10
KILL_GRACE = 3
# Task measurement: one long poll of /api/events waits at most this long (then asks again);
# the queue file is read this often while waiting for the sidecar to settle between phases.
EVENTS_POLL_S = 1.0
QUEUE_POLL_S = 0.0005
# Pause once the sidecar has settled (queue file, results dir), before the next timed step:
# lets the directory fsync of its last queue write and its log lines finish.
TASK_SETTLE_S = 0.005

# The wake command of the task sidecar: it only confirms, with shell built-ins (no exec), so
# waking is quick and not what is measured. The bench writes the results itself.
TASK_WAKE_COMMAND = ': > "$RESULTS_DIR/$TASK_ID.started"'
# The hub limits each agent to 60 task frames a minute; the bench measures the sidecar, not
# that limit, so its dev hub and its task sidecar allow far more.
HUB_RATE_FLAGS = ["--rate-light", "1000000", "--rate-normal", "1000000", "--rate-heavy", "1000000"]
BENCH_RATE_LIMITS = {"light": 1000000, "normal": 1000000, "heavy": 1000000}


class BenchError(Exception):
    """A measurement could not be taken; the message says which and why."""


# --------------------------------------------------------------------------------------
# Small helpers


def ms(ns: int | float) -> float:
    return ns / 1e6


def log_ts_ns(ts: str) -> int:
    """`2026-02-10T05:48:28.120Z` (the log's RFC 3339, millisecond) -> ns since the epoch."""
    dt = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
    return (calendar.timegm(dt.timetuple()) * 1_000_000 + dt.microsecond) * 1000


def summary(values: list[float], digits: int = 2) -> dict:
    """Median, p99 (nearest rank), min and max of the samples, and the samples."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    r = lambda v: round(v, digits)  # noqa: E731
    return {
        "n": len(values),
        "median": r(statistics.median(ordered)),
        "p99": r(p99),
        "min": r(ordered[0]),
        "max": r(ordered[-1]),
        "samples": [r(v) for v in values],
    }


def percentiles(values: list[float], digits: int = 3) -> dict:
    """n, p50, p90, p99 (nearest rank), min, max and mean of the samples, and the samples."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    rank = lambda q: ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    r = lambda v: round(v, digits)  # noqa: E731
    return {
        "n": len(values),
        "p50": r(rank(0.50)),
        "p90": r(rank(0.90)),
        "p99": r(rank(0.99)),
        "min": r(ordered[0]),
        "max": r(ordered[-1]),
        "mean": r(statistics.fmean(ordered)),
        "samples": [r(v) for v in values],
    }


def filesystem_of(path: Path) -> dict:
    """Mount point, type and device of the filesystem holding `path` (/proc/self/mountinfo):
    fsync costs depend on it (tmpfs makes it free)."""
    best = {"mount_point": None, "fstype": None, "source": None}
    target = str(path.resolve())
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best["mount_point"] or ""):
                    fstype, source = (right.split() + ["", ""])[:2]
                    best = {"mount_point": mount_point, "fstype": fstype, "source": source}
    except (OSError, IndexError):
        pass
    return best


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 0.5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post_json(port: int, path: str, body: dict, token: str,
                   timeout: float = 2) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def human_event(text: str) -> tuple[str, str] | None:
    """Event name and fields of one human stdout line of the sidecar:
    `2026-02-10T05:48:28.120Z INFO  identified session=1 hub_url=ws://...`."""
    parts = text.split(None, 3)
    if len(parts) < 3 or not parts[0].endswith("Z"):
        return None
    return parts[2], (parts[3] if len(parts) > 3 else "")


def is_event(name: str, **fields: str):
    """Predicate on a human stdout line: this event, with these `key=value` fields."""

    def pred(text: str) -> bool:
        parsed = human_event(text)
        if parsed is None or parsed[0] != name:
            return False
        rest = " " + parsed[1] + " "
        return all(f" {k}={v} " in rest for k, v in fields.items())

    return pred


# --------------------------------------------------------------------------------------
# /proc readers


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM (KiB) and Threads of /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0])
            elif key == "Threads":
                out[key] = int(value)
    return out


def smaps_rollup(pid: int) -> dict:
    """Pss and private memory (KiB) of /proc/PID/smaps_rollup: what one more process really
    costs, since the binary's pages are shared by every sidecar on the machine."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    if "Private_Clean" in out and "Private_Dirty" in out:
        out["Private"] = out["Private_Clean"] + out["Private_Dirty"]
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (threads included), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def thread_times(pid: int) -> dict:
    """Per thread: name, CPU time (ns, /proc/PID/task/TID/schedstat) and context switches."""
    threads = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                run_ns = int(f.read().split()[0])
            with open(f"{base}/{tid}/comm") as f:
                name = f.read().strip()
            switches = 0
            with open(f"{base}/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split(":")[1])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
        threads[tid] = {"name": name, "run_ns": run_ns, "switches": switches}
    return threads


def schedstat_works() -> bool:
    """Whether the kernel fills in schedstat's run time (it reads 0 when it is off)."""
    deadline = time.process_time() + 0.02
    while time.process_time() < deadline:
        pass
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[0]) > 0
    except (OSError, ValueError, IndexError):
        return False


# --------------------------------------------------------------------------------------
# Processes


class Proc:
    """A started process whose stdout lines are read on a thread and timestamped on arrival
    (monotonic and wall clock, ns). stderr goes to a file beside it."""

    def __init__(self, name: str, argv: list[str], cwd: Path, stderr_path: Path):
        self.name = name
        self.stderr_path = stderr_path
        self.lines: list[tuple[int, int, str]] = []
        self.cond = threading.Condition()
        self.eof = False
        self._stderr = open(stderr_path, "wb")
        # Launch time: taken right before the spawn, so fork/exec counts as start-up.
        self.launch_wall_ns = time.time_ns()
        self.launch_mono_ns = time.monotonic_ns()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            # Own session: a Ctrl-C at the terminal reaches only this script, which then
            # stops everything itself (the measurements see no stray signal).
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.popen.stdout
        for raw in iter(stream.readline, b""):
            mono, wall = time.monotonic_ns(), time.time_ns()
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append((mono, wall, text))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def mark(self) -> int:
        """Index of the next line: pass it as `start` to wait for lines after now."""
        with self.cond:
            return len(self.lines)

    def wait_line(self, pred, start: int = 0, timeout: float = EVENT_TIMEOUT):
        """The first line from index `start` on that matches `pred`, waiting at most
        `timeout` s: (index, arrival monotonic ns, arrival wall ns, text)."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    mono, wall, text = self.lines[i]
                    if pred(text):
                        return i, mono, wall, text
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.eof and i >= len(self.lines)):
                    break
                self.cond.wait(left)
        state = "exited" if self.eof else "still running"
        raise BenchError(
            f"{self.name}: expected line did not come within {timeout} s ({state}); "
            f"last lines:\n  " + "\n  ".join(t for _, _, t in self.lines[-8:])
        )

    def lines_between(self, start: int, end: int) -> list[str]:
        with self.cond:
            return [t for _, _, t in self.lines[start:end]]

    def signal_and_wait(self, sig: int, timeout: float = EXIT_TIMEOUT) -> tuple[float, int]:
        """Sends `sig` and blocks until the process is reaped: (ms from kill() to the end of
        waitpid, exit code). Uses a pidfd, so the wake-up comes with the exit, not on a
        polling period."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        try:
            t0 = time.monotonic_ns()
            os.kill(self.pid, sig)
            if pidfd is not None:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                if not poller.poll(timeout * 1000):
                    raise BenchError(f"{self.name}: no exit within {timeout} s of signal {sig}")
                code = self.popen.wait(timeout=1)
            else:
                deadline = time.monotonic() + timeout
                while (code := self.popen.poll()) is None:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{self.name}: no exit within {timeout} s of signal {sig}")
                    time.sleep(0.0002)
            t1 = time.monotonic_ns()
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return ms(t1 - t0), code

    def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL after a grace period. Never raises."""
        try:
            if self.popen.poll() is None:
                try:
                    os.kill(self.pid, signal.SIGTERM)
                    self.popen.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.popen.wait(timeout=KILL_GRACE)
        except (ProcessLookupError, subprocess.TimeoutExpired, OSError):
            pass
        self._reader.join(timeout=1)
        try:
            self.popen.stdout.close()
        except OSError:
            pass
        self._stderr.close()


class Sidecar:
    """One sidecar in a directory of its own (config, log, queue, results)."""

    def __init__(self, proc: Proc, directory: Path, agent_id: str, config: dict):
        self.proc = proc
        self.dir = directory
        self.agent_id = agent_id
        self.config = config
        self.log_path = directory / "sidecar.log"

    def log(self) -> list[dict]:
        """The JSON-lines log, parsed (a line being written is skipped)."""
        records = []
        try:
            text = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return records
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return records

    def log_event_ns(self, event: str, nth: int = 1, **fields) -> int:
        """Wall-clock ns of the nth JSON log line with this event (and fields)."""
        seen = 0
        for record in self.log():
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                seen += 1
                if seen == nth:
                    return log_ts_ns(record["ts"])
        raise BenchError(f"{self.agent_id}: no {event} line #{nth} in {self.log_path}")


class Bench:
    """The temp dir, the dev hub, the sidecars, and the cleanup of all of them."""

    def __init__(self, binary: Path, agents: list[str], keep_tmp: bool):
        self.binary = binary
        self.keep_tmp = keep_tmp
        self.tmp = Path(tempfile.mkdtemp(prefix="agentcom-bench-"))
        self.procs: list[Proc] = []
        self.port = free_port()
        self.tokens = {agent: secrets.token_hex(16) for agent in agents}
        self.tokens_path = self.tmp / "tokens.json"
        self.tokens_path.write_text(json.dumps(self.tokens))
        os.chmod(self.tokens_path, 0o600)
        self.hub: Proc | None = None
        self.hub_starts = 0

    @property
    def hub_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start_hub(self) -> Proc:
        """Starts the dev hub on the bench's port; returns once /health answers. A port
        still held by the previous hub is retried for a few seconds."""
        deadline = time.monotonic() + HUB_UP_TIMEOUT
        while True:
            self.hub_starts += 1
            hub = self._spawn(
                f"hub-{self.hub_starts}",
                [str(self.binary), "dev-hub", "--listen", f"127.0.0.1:{self.port}",
                 "--tokens", str(self.tokens_path)] + HUB_RATE_FLAGS,
            )
            self.hub = hub
            up = self.wait_health(deadline)
            if up is not None:
                hub.health_mono_ns = up
                return hub
            if hub.alive():
                raise BenchError(f"dev hub on port {self.port} did not answer /health in time")
            if time.monotonic() > deadline:
                err = hub.stderr_path.read_text(errors="replace").strip()
                raise BenchError(f"dev hub did not start on port {self.port}: {err}")
            time.sleep(0.05)

    def wait_health(self, deadline: float) -> int | None:
        """Polls GET /health until it answers 200: monotonic ns of that answer, or None if
        the hub process died or the deadline passed."""
        while time.monotonic() < deadline:
            try:
                status, _ = http_get(self.port, "/health", timeout=0.5)
                if status == 200:
                    return time.monotonic_ns()
            except OSError:
                pass
            if self.hub is not None and not self.hub.alive():
                return None
            time.sleep(0.001)
        return None

    def agents(self) -> list[dict]:
        status, body = http_get(self.port, "/api/agents", timeout=2)
        if status != 200:
            raise BenchError(f"GET /api/agents answered {status}")
        return json.loads(body)["agents"]

    def start_sidecar(self, agent_id: str, hub_url: str | None = None, **settings) -> Sidecar:
        directory = self.tmp / agent_id
        directory.mkdir()
        config = {
            "agent_id": agent_id,
            "token": self.tokens[agent_id],
            "hub_url": hub_url or self.hub_url,
            "capabilities": ["bench"],
            **settings,
        }
        path = directory / "config.json"
        path.write_text(json.dumps(config, indent=2))
        os.chmod(path, 0o600)
        # The working directory is the temp root: the sidecar must resolve its relative
        # paths (log, queue, results) against the config file's directory.
        proc = self._spawn(agent_id, [str(self.binary), "--config", str(path)], stderr_dir=directory)
        shown = {k: v for k, v in config.items() if k != "token"}
        return Sidecar(proc, directory, agent_id, shown)

    def _spawn(self, name: str, argv: list[str], stderr_dir: Path | None = None) -> Proc:
        proc = Proc(name, argv, self.tmp, (stderr_dir or self.tmp) / f"{name}.stderr")
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class HubEvents:
    """The dev hub's recorded events, read with `GET /api/events` long polls on one
    keep-alive connection. Each event carries `mono_ns`, the hub's CLOCK_MONOTONIC at the
    event: the clock of time.monotonic_ns() here, so it can be compared with this script's
    own timestamps."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.events: list[dict] = []
        self.next = 0

    def _get(self, path: str) -> dict:
        # One retry on a fresh connection: a keep-alive connection may have been closed.
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=EVENTS_POLL_S + EVENT_TIMEOUT)
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt:
                    raise BenchError(f"GET {path} failed: {e}") from None
                continue
            if response.status != 200:
                raise BenchError(f"GET {path} answered {response.status}: {body[:200]!r}")
            page = json.loads(body)
            if page.get("clock") != "CLOCK_MONOTONIC":
                raise BenchError(f"the dev hub's event clock is {page.get('clock')!r}, not "
                                 "CLOCK_MONOTONIC: its times cannot be compared with ours")
            return page
        raise AssertionError("unreachable")

    def skip_past(self) -> None:
        """Starts after every event recorded so far (older ones are never fetched)."""
        self.next = self._get("/api/events?since=0&limit=1")["total"]

    def mark(self) -> int:
        """Index of the next event fetched: pass it as `start` to wait for later ones."""
        return len(self.events)

    def poll(self, wait_s: float) -> None:
        """Fetches the events after the last one fetched, waiting up to `wait_s` for one."""
        page = self._get(f"/api/events?since={self.next}&wait_ms={max(0, int(wait_s * 1000))}")
        self.events.extend(page["events"])
        self.next = page["next"]

    def wait_for(self, pred, start: int, what: str, timeout: float = EVENT_TIMEOUT) -> dict:
        """The first event from index `start` on that matches `pred`, fetching more for at
        most `timeout` s."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.events):
                if pred(self.events[i]):
                    return self.events[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"the dev hub did not record {what} within {timeout} s")
            self.poll(min(left, EVENTS_POLL_S))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------------------
# Build


def build_release() -> Path:
    """`cargo build --release` (a no-op when up to date); the binary's path as cargo
    reports it (so CARGO_TARGET_DIR is honoured)."""
    print(
        "building the release binary (cargo build --release; fat LTO: the first build "
        "takes several minutes on 2 cores, later runs reuse it) ...",
        flush=True,
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["cargo", "build", "--release", "--message-format=json-render-diagnostics"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            timeout=BUILD_TIMEOUT,
        )
    except FileNotFoundError:
        raise BenchError("cargo not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"cargo build --release took longer than {BUILD_TIMEOUT} s") from None
    if result.returncode != 0:
        raise BenchError(f"cargo build --release failed (exit {result.returncode})")
    binary = None
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target") or {}
        if (msg.get("reason") == "compiler-artifact" and target.get("name") == BIN_NAME
                and "bin" in target.get("kind", []) and msg.get("executable")):
            binary = Path(msg["executable"])
    binary = binary or REPO / "target" / "release" / BIN_NAME
    if not binary.is_file():
        raise BenchError(f"release binary not found at {binary}")
    print(f"  {binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary} "
          f"ready after {time.monotonic() - started:.1f} s", flush=True)
    return binary


# --------------------------------------------------------------------------------------
# Measurements


def measure_startup(bench: Bench, runs: int) -> dict:
    """Fresh sidecar processes, one after the other: launch -> identify_sent / identified,
    from the log's timestamps (1 ms), from the arrival of the stdout lines (us, upper
    bound), and at the hub (its presence line; its connected_at). Each run ends with a
    SIGTERM, whose exit time is a sample for measure_shutdown."""
    print(f"start-up: {runs} fresh sidecars ...", flush=True)
    hub = bench.hub
    keys = ("startup_logts", "ws_open_logts", "identify_sent_logts", "identify_sent_stdout",
            "hub_identified_stdout", "hub_connected_at", "identified_logts", "identified_stdout")
    samples = {k: [] for k in keys}
    exits, codes, hub_waits, rss_at_identified = [], [], [], []
    for i in range(runs):
        agent = f"bench-start-{i}"
        hub_mark = hub.mark()
        sc = bench.start_sidecar(agent, **FAST)
        p = sc.proc
        _, sent_mono, _, _ = p.wait_line(is_event("identify_sent"))
        _, ident_mono, _, _ = p.wait_line(is_event("identified"))
        rss_at_identified.append(proc_status(p.pid)["VmRSS"])
        _, hub_mono, _, _ = hub.wait_line(
            lambda t, a=agent: t.startswith(f"hub: agent {a} identified"), start=hub_mark)
        connected_at = next(a["connected_at"] for a in bench.agents() if a["agent_id"] == agent)
        samples["startup_logts"].append(ms(sc.log_event_ns("startup") - p.launch_wall_ns))
        samples["ws_open_logts"].append(ms(sc.log_event_ns("ws_open") - p.launch_wall_ns))
        samples["identify_sent_logts"].append(ms(sc.log_event_ns("identify_sent") - p.launch_wall_ns))
        samples["identified_logts"].append(ms(sc.log_event_ns("identified") - p.launch_wall_ns))
        samples["identify_sent_stdout"].append(ms(sent_mono - p.launch_mono_ns))
        samples["identified_stdout"].append(ms(ident_mono - p.launch_mono_ns))
        samples["hub_identified_stdout"].append(ms(hub_mono - p.launch_mono_ns))
        samples["hub_connected_at"].append(connected_at - ms(p.launch_wall_ns))
        # Steady state before the stop: the first heartbeat has come back.
        p.wait_line(is_event("heartbeat"))
        elapsed, code = p.signal_and_wait(signal.SIGTERM)
        exits.append(elapsed)
        codes.append(code)
        hub_waits.append(hub_close_wait_ms(sc))
    out = {k: summary(v) for k, v in samples.items()}
    out["harness_floor_stdout"] = summary(harness_floor(bench, runs))
    out["rss_kib_at_identified"] = summary(rss_at_identified, 0)
    out["sigterm_exit_ms"] = summary(exits)
    out["sigterm_exit_codes"] = codes
    out["sigterm_hub_close_wait_ms"] = summary([w for w in hub_waits if w is not None])
    return out


def harness_floor(bench: Bench, runs: int) -> list[float]:
    """What this script adds to the stdout figures: launch of `echo` (a process that
    prints one line and exits) -> its line seen, in ms."""
    echo = shutil.which("echo") or "/bin/echo"
    floor = []
    for i in range(runs):
        proc = bench._spawn(f"echo-{i}", [echo, "ready"])
        _, seen, _, _ = proc.wait_line(lambda t: t == "ready")
        floor.append(ms(seen - proc.launch_mono_ns))
        proc.popen.wait(timeout=EXIT_TIMEOUT)
    return floor


def hub_close_wait_ms(sc: Sidecar) -> float | None:
    """From the log of a stopped sidecar: ms between its close frame (ws_close) and the end
    of the hub actor, i.e. the wait for the hub to end the TCP connection (1 ms res.)."""
    try:
        close = sc.log_event_ns("ws_close", initiator="sidecar")
        stopped = sc.log_event_ns("actor_stopped", actor="hub")
    except BenchError:
        return None
    return ms(stopped - close)


def measure_idle(sidecars: dict[str, Sidecar], settle_s: float, window_s: float) -> dict:
    """For each (identified) sidecar: VmRSS / VmHWM / Threads after `settle_s` idle, then
    CPU over `window_s`: utime+stime (/proc/PID/stat, clock ticks) and the sum of the
    threads' run time (/proc/PID/task/*/schedstat, ns), as % of one core. All sidecars are
    sampled over the same window."""
    print(f"idle: {settle_s:g} s settle, then {window_s:g} s CPU window ...", flush=True)
    for sc in sidecars.values():
        sc.proc.wait_line(is_event("identified"))
    time.sleep(settle_s)
    out = {}
    for label, sc in sidecars.items():
        out[label] = {"config": sc.config, "after_idle_s": settle_s, **proc_status(sc.proc.pid)}
    tick = os.sysconf("SC_CLK_TCK")
    begin = {label: (time.monotonic_ns(), cpu_ticks(sc.proc.pid), thread_times(sc.proc.pid))
             for label, sc in sidecars.items()}
    time.sleep(window_s)
    schedstat_ok = schedstat_works()
    for label, sc in sidecars.items():
        t0, ticks0, threads0 = begin[label]
        t1, ticks1, threads1 = time.monotonic_ns(), cpu_ticks(sc.proc.pid), thread_times(sc.proc.pid)
        wall_s = (t1 - t0) / 1e9
        run_ns = sum(th["run_ns"] for th in threads1.values()) - sum(
            th["run_ns"] for tid, th in threads0.items() if tid in threads1)
        switches = sum(th["switches"] for th in threads1.values()) - sum(
            th["switches"] for tid, th in threads0.items() if tid in threads1)
        out[label].update({
            "window_s": round(wall_s, 3),
            "cpu_ticks": ticks1 - ticks0,
            "tick_ms": 1000 / tick,
            "cpu_percent_ticks": round(100 * (ticks1 - ticks0) / tick / wall_s, 4),
            "cpu_ms_schedstat": round(run_ns / 1e6, 3) if schedstat_ok else None,
            "cpu_percent_schedstat": round(100 * run_ns / 1e9 / wall_s, 5) if schedstat_ok else None,
            "context_switches": switches,
            "wakeups_per_s": round(switches / wall_s, 2),
            "threads_stable": sorted(threads0) == sorted(threads1),
            "thread_names": sorted(th["name"] for th in threads1.values()),
        })
    return out


def measure_fleet(bench: Bench, count: int, settle_s: float, window_s: float) -> dict:
    """Many agents on one machine: `count` sidecars with the default config (30 s
    heartbeat, 30 s resource reports, info log) launched at once against the one hub, as a
    service manager starts them at boot. Per sidecar: launch -> identified (log ts), then
    after `settle_s` its VmRSS, Pss and private memory, then its CPU over `window_s` (all
    sidecars over the same window). Each is stopped with SIGTERM at the end."""
    print(f"fleet: {count} sidecars at once, {settle_s:g} s settle, {window_s:g} s CPU window ...",
          flush=True)
    fleet = {f"bench-fleet-{i}": bench.start_sidecar(f"bench-fleet-{i}") for i in range(count)}
    identified = []
    for sc in fleet.values():
        sc.proc.wait_line(is_event("identified"), timeout=EVENT_TIMEOUT * 3)
        identified.append(ms(sc.log_event_ns("identified") - sc.proc.launch_wall_ns))
    idle = measure_idle(fleet, settle_s, window_s)
    memory = {label: smaps_rollup(sc.proc.pid) for label, sc in fleet.items()}
    exits, codes = [], []
    for sc in fleet.values():
        elapsed, code = sc.proc.signal_and_wait(signal.SIGTERM)
        exits.append(elapsed)
        codes.append(code)
    pick = lambda key: [d[key] for d in idle.values() if d.get(key) is not None]  # noqa: E731
    mem = lambda key: [m[key] for m in memory.values() if key in m]  # noqa: E731
    return {
        "count": count,
        "launch_to_identified_ms": summary(identified),
        "vmrss_kib": summary(pick("VmRSS"), 0),
        "pss_kib": summary(mem("Pss"), 0),
        "private_kib": summary(mem("Private"), 0),
        "threads": summary(pick("Threads"), 0),
        "cpu_percent_schedstat": summary(pick("cpu_percent_schedstat"), 5),
        "cpu_ms_schedstat": summary(pick("cpu_ms_schedstat"), 3),
        "cpu_ticks": summary(pick("cpu_ticks"), 0),
        "wakeups_per_s": summary(pick("wakeups_per_s"), 2),
        "window_s": window_s,
        "after_idle_s": settle_s,
        "sigterm_exit_ms": summary(exits),
        "sigterm_exit_codes": codes,
    }


def fleet_rows(r: dict) -> list:
    f = r.get("fleet")
    if not f:
        return []
    n = f["count"]
    return [
        ("Fleet: %d sidecars launched at once, default config (median / max)" % n, None, None, None),
        ("launch -> identified      (log ts, 1 ms)", med_max(f["launch_to_identified_ms"], "ms"), "", ""),
        ("VmRSS per sidecar", med_max(f["vmrss_kib"], "KiB", 0), "< 6 MiB",
         verdict(f["vmrss_kib"]["max"], TARGETS["idle_rss_kib"])),
        ("Pss per sidecar (shared pages split)", med_max(f["pss_kib"], "KiB", 0), "", ""),
        ("private memory per sidecar", med_max(f["private_kib"], "KiB", 0), "", ""),
        ("CPU per sidecar, schedstat (%gs)" % f["window_s"],
         med_max(f["cpu_percent_schedstat"], "%", 4), "< 0.05 %",
         verdict(f["cpu_percent_schedstat"]["max"], TARGETS["idle_cpu_percent"])
         if f["cpu_percent_schedstat"].get("n") else ""),
        ("threads per sidecar", med_max(f["threads"], "", 0), "", ""),
        ("SIGTERM -> reaped", med_max(f["sigterm_exit_ms"], "ms")
         + f" (exit {sorted(set(f['sigterm_exit_codes']))})", "",
         verdict(0, 1, f["sigterm_exit_codes"])),
    ]


def measure_heartbeat(sc: Sidecar, want: int = 10) -> dict:
    """Median / p99 of rtt_us of the `heartbeat` debug lines (ping sent -> pong handled, as
    the sidecar measures it), waiting for at least `want` of them."""
    interval_s = sc.config.get("heartbeat_interval_ms", 30000) / 1000
    deadline = time.monotonic() + want * interval_s + EVENT_TIMEOUT
    while True:
        rtts = [r["rtt_us"] for r in sc.log() if r.get("event") == "heartbeat" and "rtt_us" in r]
        if len(rtts) >= want or time.monotonic() > deadline:
            break
        time.sleep(interval_s / 2)
    if len(rtts) < want:
        raise BenchError(f"{sc.agent_id}: only {len(rtts)} heartbeat lines, wanted {want}")
    out = summary([float(v) for v in rtts], 0)
    out["interval_ms"] = sc.config.get("heartbeat_interval_ms")
    return out


def measure_reconnect(bench: Bench, sc: Sidecar, reps: int, down_ms: int = 0) -> dict:
    """Hub restarts (SIGTERM, `down_ms` pause, then a new dev hub on the same port) while
    `sc` is identified: ms from the kill and from the new hub's first /health answer to the
    sidecar's next `identified` stdout line, with the attempts and backoff delays it took."""
    print(f"reconnect: {reps} hub restarts ...", flush=True)
    from_kill, from_health, from_listen, hub_down, rows = [], [], [], [], []
    for _ in range(reps):
        # Steady state: identified and a pong seen since (so the backoff was reset).
        mark = sc.proc.mark()
        sc.proc.wait_line(is_event("heartbeat"), start=mark, timeout=EVENT_TIMEOUT)
        mark = sc.proc.mark()
        old = bench.hub
        t_kill = time.monotonic_ns()
        _, code = old.signal_and_wait(signal.SIGTERM)
        t_gone = time.monotonic_ns()
        time.sleep(down_ms / 1000)
        hub = bench.start_hub()
        t_health = hub.health_mono_ns
        _, t_listen, _, _ = hub.wait_line(lambda t: t.startswith("hub: listening"), timeout=1)
        idx, t_ident, _, _ = sc.proc.wait_line(
            is_event("identified"), start=mark,
            timeout=EVENT_TIMEOUT + (down_ms + FAST["reconnect_max_ms"]) / 1000)
        lines = sc.proc.lines_between(mark, idx + 1)
        delays = []
        for text in lines:
            parsed = human_event(text)
            if parsed and parsed[0] == "reconnect_scheduled":
                m = re.search(r"\bdelay_ms=(\d+)", parsed[1])
                if m:
                    delays.append(int(m.group(1)))
        attempts = sum(1 for t in lines if is_event("ws_connecting")(t))
        from_kill.append(ms(t_ident - t_kill))
        from_health.append(ms(t_ident - t_health))
        from_listen.append(ms(t_ident - t_listen))
        hub_down.append(ms(t_health - t_kill))
        rows.append({"hub_exit_code": code, "hub_exit_ms": round(ms(t_gone - t_kill), 2),
                     "hub_down_ms": round(ms(t_health - t_kill), 2),
                     "kill_to_identified_ms": round(ms(t_ident - t_kill), 2),
                     "health_to_identified_ms": round(ms(t_ident - t_health), 2),
                     "attempts": attempts, "delays_ms": delays})
    return {
        "reconnect_initial_ms": FAST["reconnect_initial_ms"],
        "reconnect_max_ms": FAST["reconnect_max_ms"],
        "hub_pause_ms": down_ms,
        "kill_to_identified_ms": summary(from_kill),
        "health_to_identified_ms": summary(from_health),
        "listening_to_identified_ms": summary(from_listen),
        "hub_down_ms": summary(hub_down),
        "restarts": rows,
    }


def measure_shutdown(bench: Bench, sc: Sidecar, runs_no_hub: int) -> dict:
    """SIGTERM -> exit (kill() to waitpid returning, exit code must be 0): of `sc`, which is
    connected to the dev hub; and of fresh sidecars that have no session (their hub port is
    closed), which shows the sidecar's own share without the close handshake."""
    print(f"shutdown: SIGTERM of the long-running sidecar, and {runs_no_hub} without a hub ...",
          flush=True)
    mark = sc.proc.mark()
    sc.proc.wait_line(is_event("heartbeat"), start=mark)
    status_before = proc_status(sc.proc.pid)
    elapsed, code = sc.proc.signal_and_wait(signal.SIGTERM)
    last = (sc.log() or [{}])[-1]
    connected = {
        "ms": round(elapsed, 2),
        "exit_code": code,
        "hub_close_wait_ms": hub_close_wait_ms(sc),
        "last_log_line": {k: last.get(k) for k in ("event", "phase", "exit_code", "elapsed_ms")},
        "status_before": status_before,
    }
    closed_port = free_port()
    exits, codes = [], []
    for i in range(runs_no_hub):
        lone = bench.start_sidecar(f"bench-nohub-{i}", hub_url=f"ws://127.0.0.1:{closed_port}/ws",
                                   **FAST)
        lone.proc.wait_line(is_event("reconnect_scheduled"))
        elapsed, code = lone.proc.signal_and_wait(signal.SIGTERM)
        exits.append(elapsed)
        codes.append(code)
    return {
        "connected": connected,
        "no_session_ms": summary(exits),
        "no_session_exit_codes": codes,
    }


def read_queue(sc: Sidecar) -> dict | None:
    """The sidecar's queue file, parsed; None while it is missing or unreadable."""
    try:
        return json.loads((sc.dir / "queue.json").read_bytes())
    except (OSError, ValueError):
        return None


def wait_settled(sc: Sidecar, cond, what: str, timeout: float = EVENT_TIMEOUT) -> None:
    """Polls the sidecar's queue file (and whatever `cond` looks at) until `cond(queue)`
    holds, then pauses TASK_SETTLE_S. Between timed steps only: it is not measured."""
    deadline = time.monotonic() + timeout
    while True:
        queue = read_queue(sc)
        if queue is not None and cond(queue):
            time.sleep(TASK_SETTLE_S)
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{sc.agent_id}: not settled within {timeout} s ({what}); "
                             f"queue file: {json.dumps(queue)[:500]}")
        if not sc.proc.alive():
            raise BenchError(f"{sc.agent_id}: exited while waiting ({what})")
        time.sleep(QUEUE_POLL_S)


def measure_tasks(bench: Bench, agent_id: str, count: int, budget_s: float) -> dict:
    """Task latencies, on a sidecar of its own whose wake command only confirms. One task at
    a time, up to `count` tasks or `budget_s` seconds:

    1. POST /api/tasks (trivial, assigned to this agent); task_assign -> task_accepted is the
       hub's time of the sidecar's task_accepted frame minus the hub's time of writing the
       task_assign frame (both on the hub's clock, from GET /api/events).
    2. Once the sidecar has settled (task woken and confirmed, all on disk),
       the result is written to a temporary name in results_dir and renamed into place;
       result file -> task_complete is the hub's time of the task_complete frame minus
       time.monotonic_ns() taken right after os.rename returned (same clock).
    3. Wait until the sidecar has settled again (task gone, complete acked, files removed)."""
    print(f"tasks: up to {count} tasks, one at a time, at most {budget_s:g} s ...", flush=True)
    # The hub routes every queued task (trivial ones to target `sidecar`): the same command
    # serves them all, so the figures are the relay's, not a bundled agent's.
    sc = bench.start_sidecar(agent_id, wake_command=TASK_WAKE_COMMAND,
                             wake_commands={t: TASK_WAKE_COMMAND
                                            for t in ("sidecar", "ollama", "claude")},
                             hub_rate_limits=BENCH_RATE_LIMITS)
    sc.proc.wait_line(is_event("identified"))
    results_dir = sc.dir / "results"
    token = bench.tokens[agent_id]
    hub = HubEvents(bench.port)
    status_before = proc_status(sc.proc.pid)
    accepted_ms, complete_ms, push_http_ms, rename_us, seen_lag_ms = [], [], [], [], []
    result_body = json.dumps({"status": "success", "output": {"summary": "bench result",
                                                             "lines": ["x" * 64] * 8}}) + "\n"
    started = time.monotonic()
    try:
        hub.skip_past()
        for i in range(count):
            if time.monotonic() - started > budget_s:
                break
            # 1. task_assign -> task_accepted, both at the hub.
            mark = hub.mark()
            t_post = time.monotonic_ns()
            status, body = http_post_json(
                bench.port, "/api/tasks",
                {"description": f"bench task {i}", "metadata": {"n": i},
                 "complexity_tier": "trivial", "assign_to": agent_id},
                token)
            t_posted = time.monotonic_ns()
            if status != 201:
                raise BenchError(f"POST /api/tasks answered {status}: {body[:200]!r}")
            task_id = json.loads(body)["task_id"]
            pushed = hub.wait_for(
                lambda e: e["kind"] == "assignment_pushed" and e.get("task_id") == task_id,
                mark, f"the push of {task_id}")
            answer = hub.wait_for(
                lambda e: e["kind"] == "frame" and e.get("task_id") == task_id
                and e.get("type") in ("task_accepted", "task_rejected", "task_failed"),
                mark, f"an answer to {task_id}")
            t_seen = time.monotonic_ns()
            if answer["type"] != "task_accepted":
                raise BenchError(f"{task_id}: the sidecar answered {answer['type']}")
            if not t_post <= pushed["mono_ns"] <= answer["mono_ns"] <= t_seen:
                raise BenchError(
                    f"{task_id}: hub times out of order with ours (post {t_post}, pushed "
                    f"{pushed['mono_ns']}, accepted {answer['mono_ns']}, seen {t_seen}): "
                    "not the same clock?")
            accepted_ms.append(ms(answer["mono_ns"] - pushed["mono_ns"]))
            push_http_ms.append(ms(t_posted - t_post))
            seen_lag_ms.append(ms(t_seen - answer["mono_ns"]))

            # Woken and confirmed, on disk: nothing left in flight.
            wait_settled(sc, lambda q: any(t.get("task_id") == task_id
                                           and (t.get("agent") or {}).get("state") == "confirmed"
                                           for t in q.get("tasks", []))
                         and not q.get("outbox"), f"{task_id} woken and confirmed")

            # 2. result file renamed into place -> task_complete at the hub.
            final = results_dir / f"{task_id}.json"
            tmp = results_dir / f".{task_id}.json.tmp"
            tmp.write_text(result_body)
            mark = hub.mark()
            t_rename = time.monotonic_ns()
            os.rename(tmp, final)
            t_renamed = time.monotonic_ns()
            done = hub.wait_for(
                lambda e: e["kind"] == "frame" and e.get("task_id") == task_id
                and e.get("type") in ("task_complete", "task_failed"),
                mark, f"the result of {task_id}")
            if done["type"] != "task_complete":
                raise BenchError(f"{task_id}: the sidecar reported {done['type']}")
            if done["mono_ns"] < t_renamed:
                raise BenchError(f"{task_id}: task_complete recorded at {done['mono_ns']}, "
                                 f"before the rename returned at {t_renamed}: not the same clock?")
            complete_ms.append(ms(done["mono_ns"] - t_renamed))
            rename_us.append((t_renamed - t_rename) / 1000)

            # 3. Idle again: no task, the complete acked, the agent's files removed.
            wait_settled(sc, lambda q: not q.get("tasks") and not q.get("outbox")
                         and not final.exists()
                         and not (results_dir / f"{task_id}.started").exists(),
                         f"{task_id} finished")
    finally:
        hub.close()
    wall_s = time.monotonic() - started
    n = len(accepted_ms)
    status_after = proc_status(sc.proc.pid)
    exit_ms, exit_code = sc.proc.signal_and_wait(signal.SIGTERM)
    return {
        "tasks_requested": count,
        "tasks_done": n,
        "stopped_by_budget": n < count,
        "budget_s": budget_s,
        "wall_s": round(wall_s, 2),
        "wake_command": TASK_WAKE_COMMAND,
        "result_bytes": len(result_body),
        "filesystem": filesystem_of(sc.dir),
        "assign_to_accepted_ms": percentiles(accepted_ms),
        "result_to_complete_ms": percentiles(complete_ms),
        "push_http_roundtrip_ms": percentiles(push_http_ms),
        "accepted_event_to_seen_by_bench_ms": percentiles(seen_lag_ms),
        "rename_syscall_us": percentiles(rename_us, 1),
        "status_before": status_before,
        "status_after": status_after,
        "sigterm_exit_ms": round(exit_ms, 2),
        "sigterm_exit_code": exit_code,
    }


class StandinOllama:
    """A loopback HTTP server speaking Ollama's streaming chat (`POST /api/chat`, NDJSON
    chunks, the last with `done` and token counts) and `GET /api/tags`: `chunks` chunks of
    `chunk_text`, `gap_s` apart, so an agent process can be sampled while it streams."""

    def __init__(self, chunks: int, chunk_text: str, gap_s: float):
        import http.server

        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                body = json.dumps({"models": [{"name": "bench-model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(obj):
                    data = (json.dumps(obj) + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                for _ in range(chunks):
                    chunk({"model": "bench-model", "message": {"role": "assistant",
                                                               "content": chunk_text},
                           "done": False})
                    time.sleep(gap_s)
                chunk({"model": "bench-model", "message": {"role": "assistant", "content": ""},
                       "done": True, "prompt_eval_count": 12, "eval_count": chunks})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def measure_routed(bench: Bench, agent_id: str, count: int) -> dict:
    """A routed task done by the bundled Ollama agent (`agentcom-sidecar agent ollama`,
    started by the waker from the sidecar's own binary) against a stand-in Ollama server on
    loopback: one task at a time, `count` tasks. Per task: the push -> `wake_attempt` (the
    relay), `wake_attempt` -> `confirmation_received` (the agent program's start: exec,
    reading TASK_FILE, writing `.started`, as the sidecar sees it), push -> `task_complete`
    at the hub, and the agent process's VmRSS / Pss sampled while it streams."""
    print(f"routed: {count} tasks through the bundled Ollama agent ...", flush=True)
    ollama = StandinOllama(chunks=20, chunk_text="routed text ", gap_s=0.02)
    sc = bench.start_sidecar(agent_id, ollama_url=f"http://127.0.0.1:{ollama.port}",
                             hub_rate_limits=BENCH_RATE_LIMITS)
    sc.proc.wait_line(is_event("identified"))
    token = bench.tokens[agent_id]
    hub = HubEvents(bench.port)
    relay_ms, start_ms, total_ms, rss_kib, pss_kib = [], [], [], [], []
    try:
        hub.skip_past()
        for i in range(count):
            mark = hub.mark()
            status, body = http_post_json(
                bench.port, "/api/tasks",
                {"description": f"routed bench task {i}", "complexity_tier": "standard",
                 "assign_to": agent_id},
                token)
            if status != 201:
                raise BenchError(f"POST /api/tasks answered {status}: {body[:200]!r}")
            task_id = json.loads(body)["task_id"]
            pushed = hub.wait_for(
                lambda e: e["kind"] == "assignment_pushed" and e.get("task_id") == task_id,
                mark, f"the push of {task_id}")
            # The agent process, sampled while it streams (it lives ~0.4 s).
            deadline = time.monotonic() + 10
            sampled = False
            while time.monotonic() < deadline and not sampled:
                for child in children_of(sc.proc.pid):
                    try:
                        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if b"agent\x00ollama" not in cmdline:
                        continue
                    time.sleep(0.15)
                    st, roll = proc_status(child), smaps_rollup(child)
                    if st.get("VmRSS") and roll.get("Pss"):
                        rss_kib.append(st["VmRSS"])
                        pss_kib.append(roll["Pss"])
                        sampled = True
                        break
                time.sleep(0.005)
            done = hub.wait_for(
                lambda e: e["kind"] == "frame" and e.get("task_id") == task_id
                and e.get("type") in ("task_complete", "task_failed"),
                mark, f"the result of {task_id}")
            if done["type"] != "task_complete":
                raise BenchError(f"{task_id}: the sidecar reported {done['type']}")
            total_ms.append(ms(done["mono_ns"] - pushed["mono_ns"]))
            wait_settled(sc, lambda q: not q.get("tasks") and not q.get("outbox"),
                         f"{task_id} finished")
            attempt = sc.log_event_ns("wake_attempt", task_id=task_id)
            received = sc.log_event_ns("task_received", task_id=task_id)
            confirmed = sc.log_event_ns("confirmation_received", task_id=task_id)
            relay_ms.append(ms(attempt - received))
            start_ms.append(ms(confirmed - attempt))
    finally:
        hub.close()
        ollama.close()
    exit_ms, _ = sc.proc.signal_and_wait(signal.SIGTERM)
    return {
        "tasks": len(total_ms),
        "stream": {"chunks": 20, "gap_ms": 20},
        "received_to_wake_attempt_ms": percentiles(relay_ms),
        "wake_attempt_to_started_ms": percentiles(start_ms),
        "push_to_task_complete_ms": percentiles(total_ms),
        "agent_process_vmrss_kib": summary(rss_kib, 0) if rss_kib else None,
        "agent_process_pss_kib": summary(pss_kib, 0) if pss_kib else None,
        "sigterm_exit_ms": round(exit_ms, 2),
    }


def measure_binary(binary: Path) -> dict:
    return {"path": str(binary.relative_to(REPO)) if binary.is_relative_to(REPO) else str(binary),
            "bytes": binary.stat().st_size}


# --------------------------------------------------------------------------------------
# Report


def environment() -> dict:
    def run(argv):
        try:
            return subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "rustc": run(["rustc", "--version"]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
    }


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def med_max(s: dict, unit: str, digits=1) -> str:
    if not s.get("n"):
        return "-"
    return f"{fmt(s['median'], digits)} / {fmt(s['max'], digits)} {unit}"


def verdict(value, limit, exit_codes=(0,)) -> str:
    if any(code != 0 for code in exit_codes):
        return "EXIT CODE NOT 0"
    if value is None:
        return ""
    return "ok" if value < limit else "MISSED"


def pct_row(s: dict, unit: str, digits=2) -> str:
    if not s.get("n"):
        return "-"
    return " / ".join(fmt(s[k], digits) for k in ("p50", "p90", "p99", "max")) + f" {unit}"


def task_rows(r: dict) -> list:
    tk = r["tasks"]
    fs = tk["filesystem"]
    acc, done = tk["assign_to_accepted_ms"], tk["result_to_complete_ms"]
    limit = TARGETS["task_latency_p99_ms"]
    return [
        ("Tasks, n=%d one at a time (p50 / p90 / p99 / max; hub clock)" % tk["tasks_done"],
         None, None, None),
        ("task_assign sent -> task_accepted received", pct_row(acc, "ms", 3),
         f"p99 < {limit:g} ms", verdict(acc.get("p99"), limit)),
        ("result renamed in -> task_complete received", pct_row(done, "ms", 3),
         f"p99 < {limit:g} ms", verdict(done.get("p99"), limit)),
        ("  (Node: result read after 500 ms unchanged)", "", f"Node: >= {NODE['result_settle_ms']} ms", ""),
        ("  queue and results on", f"{fs['fstype']} ({fs['mount_point']})", "", ""),
        ("VmRSS before / after the tasks",
         f"{tk['status_before']['VmRSS']} / {tk['status_after']['VmRSS']} KiB", "", ""),
    ]


def routed_rows(r: dict) -> list:
    rt = r.get("routed")
    if not rt:
        return []
    mem = lambda s: "-" if not s or not s.get("n") else f"{s['median']:.0f} / {s['max']:.0f} KiB"  # noqa: E731
    return [
        ("Routed task, bundled Ollama agent, n=%d (20 chunks, 20 ms apart)" % rt["tasks"],
         None, None, None),
        ("task_received -> wake_attempt (relay)", pct_row(rt["received_to_wake_attempt_ms"], "ms", 3), "", ""),
        ("wake_attempt -> .started seen (agent start)", pct_row(rt["wake_attempt_to_started_ms"], "ms", 3), "", ""),
        ("push -> task_complete (hub clock)", pct_row(rt["push_to_task_complete_ms"], "ms", 3),
         "(~400 ms of streaming)", ""),
        ("agent process VmRSS (median / max)", mem(rt["agent_process_vmrss_kib"]), "", ""),
        ("agent process Pss (median / max)", mem(rt["agent_process_pss_kib"]), "", ""),
    ]


def render(rows: list) -> str:
    w0 = max(len(r[0]) for r in rows) + 4
    w1 = max(len(r[1] or "") for r in rows) + 2
    w2 = max(len(r[2] or "") for r in rows) + 2
    out = [f"{'Figure':<{w0}}{'Measured':<{w1}}{'Target / ref.':<{w2}}Meets",
           "-" * (w0 + w1 + w2 + 6)]
    for name, value, target, ok in rows:
        if value is None:
            out.append(f"{name}")
        else:
            out.append(f"  {name:<{w0 - 2}}{value:<{w1}}{target:<{w2}}{ok}")
    return "\n".join(out)


def table(r: dict) -> str:
    if "startup" not in r:
        return render((task_rows(r) if "tasks" in r else []) + routed_rows(r) + fleet_rows(r))
    st, idle, hb, rc, sd = r["startup"], r["idle"], r["heartbeat"], r["reconnect"], r["shutdown"]
    fast, dflt = idle["fast"], idle["default"]
    n = st["identify_sent_logts"]["n"]
    rows = [
        ("Start-up, n=%d fresh processes (median / max)" % n, None, None, None),
        ("launch -> startup line    (log ts, 1 ms)", med_max(st["startup_logts"], "ms"), "", ""),
        ("launch -> identify_sent   (log ts, 1 ms)", med_max(st["identify_sent_logts"], "ms"),
         "< 10 ms", verdict(st["identify_sent_logts"]["max"], TARGETS["identify_sent_ms"])),
        ("launch -> identify_sent   (stdout line seen)", med_max(st["identify_sent_stdout"], "ms", 2),
         "< 10 ms", verdict(st["identify_sent_stdout"]["max"], TARGETS["identify_sent_ms"])),
        ("launch -> hub identified  (hub stdout line)", med_max(st["hub_identified_stdout"], "ms", 2), "", ""),
        ("launch -> hub connected_at (/api/agents, 1 ms)", med_max(st["hub_connected_at"], "ms"), "", ""),
        ("launch -> identified      (log ts, 1 ms)", med_max(st["identified_logts"], "ms"),
         f"Node: {NODE['start_to_identified_ms']} ms", ""),
        ("launch -> identified      (stdout line seen)", med_max(st["identified_stdout"], "ms", 2), "", ""),
        ("harness floor: launch -> echo's line seen", med_max(st["harness_floor_stdout"], "ms", 2), "", ""),
        ("Idle (after %gs; CPU over %gs)" % (fast["after_idle_s"], fast["window_s"]), None, None, None),
        ("VmRSS, 1 s heartbeat + debug log", f"{fast['VmRSS']} KiB ({fast['VmRSS'] / 1024:.2f} MiB)",
         "< 5 MiB", verdict(fast["VmRSS"], TARGETS["idle_rss_kib"])),
        ("VmHWM, 1 s heartbeat + debug log", f"{fast['VmHWM']} KiB", f"Node: {NODE['rss_mb']} MB", ""),
        ("VmRSS, default config", f"{dflt['VmRSS']} KiB ({dflt['VmRSS'] / 1024:.2f} MiB)",
         "< 5 MiB", verdict(dflt["VmRSS"], TARGETS["idle_rss_kib"])),
        ("VmHWM, default config", f"{dflt['VmHWM']} KiB", "", ""),
    ]
    # The idle CPU target is judged on the default config; the 1 s heartbeat with debug
    # log is shown for reference (30 times the pings, two log lines each).
    for label, d, judged in (("default config (30 s heartbeat)", dflt, True),
                             ("1 s heartbeat + debug log", fast, False)):
        rows.append((f"CPU, {label}, schedstat",
                     f"{fmt(d['cpu_percent_schedstat'], 4)} % ({fmt(d['cpu_ms_schedstat'], 2)} ms)",
                     "< 0.05 %" if judged else "(reference)",
                     verdict(d["cpu_percent_schedstat"], TARGETS["idle_cpu_percent"]) if judged else ""))
        rows.append((f"CPU, {label}, utime+stime",
                     f"{fmt(d['cpu_percent_ticks'], 2)} % ({d['cpu_ticks']} ticks of {d['tick_ms']:g} ms)",
                     "(10 ms ticks)", ""))
        rows.append((f"wake-ups, {label}", f"{d['wakeups_per_s']:g} /s", "", ""))
    rows += [
        ("Threads idle (default / fast)", f"{dflt['Threads']} / {fast['Threads']}", "", ""),
        ("Heartbeat", None, None, None),
        ("ping -> pong rtt_us, n=%d (median / p99)" % hb["n"],
         f"{hb['median']:.0f} / {hb['p99']:.0f} us", "", ""),
        ("Reconnect after hub restart, n=%d (median / max)" % rc["kill_to_identified_ms"]["n"], None, None, None),
        ("hub /health answers -> identified", med_max(rc["health_to_identified_ms"], "ms"),
         f"initial {rc['reconnect_initial_ms']}, max {rc['reconnect_max_ms']} ms", ""),
        ("hub SIGTERM -> identified", med_max(rc["kill_to_identified_ms"], "ms"), "", ""),
        ("(hub down: SIGTERM -> new hub's /health)", med_max(rc["hub_down_ms"], "ms"), "", ""),
        ("Shutdown (SIGTERM -> reaped; exit codes)", None, None, None),
        ("long-running sidecar, session open",
         f"{sd['connected']['ms']:.1f} ms (exit {sd['connected']['exit_code']})",
         "< 50 ms", verdict(sd["connected"]["ms"], TARGETS["sigterm_exit_ms"],
                            [sd["connected"]["exit_code"]])),
        ("default-config sidecar, session open",
         f"{dflt['sigterm_exit_ms']:.1f} ms (exit {dflt['sigterm_exit_code']})", "< 50 ms",
         verdict(dflt["sigterm_exit_ms"], TARGETS["sigterm_exit_ms"], [dflt["sigterm_exit_code"]])),
        ("fresh sidecars, session open (median / max)",
         med_max(st["sigterm_exit_ms"], "ms") + f" (exit {sorted(set(st['sigterm_exit_codes']))})",
         f"Node: {NODE['sigterm_exit_ms']} ms",
         verdict(st["sigterm_exit_ms"]["max"], TARGETS["sigterm_exit_ms"], st["sigterm_exit_codes"])),
        ("  of which waiting for the hub to drop TCP", med_max(st["sigterm_hub_close_wait_ms"], "ms"), "", ""),
        ("no hub session (median / max)",
         med_max(sd["no_session_ms"], "ms", 2) + f" (exit {sorted(set(sd['no_session_exit_codes']))})",
         "< 50 ms",
         verdict(sd["no_session_ms"]["max"], TARGETS["sigterm_exit_ms"], sd["no_session_exit_codes"])),
        *task_rows(r),
        *routed_rows(r),
        *fleet_rows(r),
        ("Binary", None, None, None),
        ("size of " + r["binary"]["path"],
         f"{r['binary']['bytes']} B ({r['binary']['bytes'] / 1024 / 1024:.2f} MiB)", "", ""),
        ("threads after the reconnects", f"{sd['connected']['status_before']['Threads']}", "", ""),
        ("VmRSS after the reconnects", f"{sd['connected']['status_before']['VmRSS']} KiB", "", ""),
    ]
    return render(rows)


# --------------------------------------------------------------------------------------


def measure_all(bench: Bench, binary: Path, args, results: dict) -> None:
    """Every measurement, in order, into `results`."""
    results["startup"] = measure_startup(bench, args.runs)
    # Two long-running sidecars side by side: the measured one (1 s heartbeat, debug
    # log) and a second process with the default config, for realistic idle figures.
    fast = bench.start_sidecar("bench-idle", **FAST)
    default = bench.start_sidecar("bench-default")
    results["idle"] = measure_idle({"fast": fast, "default": default},
                                   args.settle_seconds, args.idle_seconds)
    results["heartbeat"] = measure_heartbeat(fast)
    ms_default, code_default = default.proc.signal_and_wait(signal.SIGTERM)
    results["idle"]["default"]["sigterm_exit_ms"] = round(ms_default, 2)
    results["idle"]["default"]["sigterm_exit_code"] = code_default
    results["reconnect"] = measure_reconnect(bench, fast, args.reconnects, args.hub_down_ms)
    results["shutdown"] = measure_shutdown(bench, fast, args.shutdown_runs)
    # On the (last restarted) hub, with every other sidecar stopped.
    results["tasks"] = measure_tasks(bench, "bench-tasks", args.tasks, args.tasks_seconds)
    if args.routed > 0:
        results["routed"] = measure_routed(bench, "bench-routed", args.routed)
    if args.fleet > 0:
        results["fleet"] = measure_fleet(bench, args.fleet, args.settle_seconds, args.idle_seconds)
    results["binary"] = measure_binary(binary)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="fresh processes for start-up (10)")
    ap.add_argument("--settle-seconds", type=float, default=5, help="idle before RSS (5)")
    ap.add_argument("--idle-seconds", type=float, default=10, help="CPU window (10)")
    ap.add_argument("--reconnects", type=int, default=5, help="hub restarts (5)")
    ap.add_argument("--hub-down-ms", type=int, default=0,
                    help="pause between the hub's exit and its restart (0)")
    ap.add_argument("--shutdown-runs", type=int, default=5, help="SIGTERM runs without hub (5)")
    ap.add_argument("--tasks", type=int, default=300, help="tasks for the task latencies (300)")
    ap.add_argument("--tasks-seconds", type=float, default=60,
                    help="time budget of the task part; fewer tasks if it runs out (60)")
    ap.add_argument("--routed", type=int, default=20,
                    help="routed tasks through the bundled Ollama agent (20; 0: skip)")
    ap.add_argument("--only-tasks", action="store_true",
                    help="measure the task latencies only (no start-up, idle, reconnect, ...)")
    ap.add_argument("--fleet", type=int, default=10,
                    help="sidecars launched at once for the per-agent cost (10; 0: skip)")
    ap.add_argument("--only-fleet", action="store_true",
                    help="measure the per-agent cost of a fleet only")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the figures (bench/last-run.json; with --only-tasks, "
                         "nowhere unless given)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("bench/run.py reads /proc: Linux only", file=sys.stderr)
        return 2

    # Ctrl-C works even where SIGINT came in ignored; SIGTERM and SIGHUP unwind through the
    # cleanup below the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    binary = build_release()
    agents = ([f"bench-start-{i}" for i in range(args.runs)] + ["bench-idle", "bench-default"]
              + [f"bench-nohub-{i}" for i in range(args.shutdown_runs)]
              + ["bench-tasks", "bench-routed"]
              + [f"bench-fleet-{i}" for i in range(args.fleet)])
    bench = Bench(binary, agents, args.keep_tmp)
    results = {"environment": environment(), "targets": TARGETS, "node_sidecar": NODE}
    try:
        bench.start_hub()
        print(f"dev hub on {bench.hub_url}; temp dir {bench.tmp}", flush=True)
        if args.only_tasks:
            results["tasks"] = measure_tasks(bench, "bench-tasks", args.tasks, args.tasks_seconds)
            if args.routed > 0:
                results["routed"] = measure_routed(bench, "bench-routed", args.routed)
        elif args.only_fleet:
            results["fleet"] = measure_fleet(bench, max(args.fleet, 1), args.settle_seconds,
                                             args.idle_seconds)
        else:
            measure_all(bench, binary, args, results)
    except BenchError as e:
        results["error"] = str(e)
        print(f"bench: error: {e}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        print("bench: interrupted; stopping every process it started", file=sys.stderr)
        raise
    finally:
        bench.cleanup()
        if args.keep_tmp:
            print(f"temp dir kept: {bench.tmp}")

    out = args.json or (None if args.only_tasks or args.only_fleet else DEFAULT_JSON)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if "error" in results:
        if out is not None:
            print(f"partial results written to {out}", file=sys.stderr)
        return 1
    print()
    print(table(results))
    if out is not None:
        print(f"\nall samples: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
