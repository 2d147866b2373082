"""Rival C collectors for side-by-side benchmarks: nfcapd (nfdump 1.7) and nfacctd (pmacct 1.7).

`start(name, workdir)` runs one on 127.0.0.1 and a free port; the bench sends it the same datagrams
as imds-flow; `Rival.stop()` drains it, stops it cleanly and returns what it decoded. Loopback only.

Configuration: each is set up to go as fast as it reasonably can, on the same terms as imds-flow.
- Both bind 127.0.0.1 only and ask for a `rcvbuf` (64 MiB) socket receive buffer: nfcapd `-B`,
  nfacctd `nfacctd_pipe_size`. Both use plain SO_RCVBUF, so the kernel caps the request at
  net.core.rmem_max, and the granted buffer is twice that: 8 MiB with this machine's 4 MiB rmem_max.
  `Rival.rcvbuf` is the granted size, read back with `ss -m`. For a fair race imds-flow should get
  the same buffer size.
- nfcapd: one flow source. It writes uncompressed nffiles into `workdir/nfcapd/flows`: -z/-y/-j would
  cost CPU in its writer thread. Files rotate every hour (-t 3600), so a run normally fills one file.
  No -e expiry, no -x launcher, no repeaters, no metric socket. nfcapd 1.7 stores every element it
  decodes and has no switch to leave extensions out.
- nfacctd: runs in the foreground with one `print` plugin and `aggregate: flows`. That gives a single
  grand-total row, the cheapest aggregation: one cache bucket per record. It refreshes every hour and
  appends CSV into `workdir/nfacctd`. The core-to-plugin pipe is 64 MiB with 64 KiB buffers
  (pmacct's advice is a 1:100..1:1000 ratio; other sizes from 4 KiB to 8 MiB measured no better).
  Sequence checks are left disabled (the default). Its limit here is the plugin: past about
  1.5 M records/s the log says "Missing data detected" and records are lost inside it, with no
  kernel drops.

Counting decoded records, exactly:
- nfcapd: SIGTERM makes it close the current file with its statistics record. For each file,
  `nfdump -r FILE -I` prints "Flows: N", and we sum N over the files.
- nfacctd: the print plugin's `flows` counter goes up by one for every NetFlow/IPFIX record. Our
  synthetic records carry no flow-count element, so the FLOWS column of the grand total is the number
  of records the plugin received, and packets=1 is not needed. SIGINT makes the plugin purge its
  cache to the CSV (nfacctd ignores SIGTERM). Records lost in the core-to-plugin pipe are correctly
  left out of the count. Stopping takes about 2.5 s.
Before it sends the signal, `stop()` waits until the socket's receive queue is empty and the
collector's CPU time has stopped moving, so the stop itself loses nothing. Then it reads the kernel
drop counter for the collector's socket (`drops` in /proc/net/udp and udp6). Every offered record is
therefore decoded, in a kernel-dropped datagram, or lost inside the collector (offered - decoded -
records per datagram * drops). The tests check that identity over real traffic.
CPU is the run time of the collector's process tree (nfacctd's plugin is a child process), to the
nanosecond where the kernel keeps per-thread schedstat (see tree_cpu_seconds).
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from imds_flow.sockets import udp_sockets

__all__ = ["Rival", "available", "installed", "start", "NAMES", "RIVALS"]

NAMES = ("nfcapd", "nfacctd")
OURS = ("imds-flow", "floor", "bare")  # no package to install: imds-flow, bench/floor.py, bench/bare.py
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LOCALHOST_HEX = "0100007F"
NFACCTD_PLUGIN_PIPE = 64 << 20         # core -> plugin queue, bytes
NFACCTD_PLUGIN_BUFFER = 64 << 10       # its transfer unit, bytes


# every rival of the benches (these NetFlow / IPFIX ones, and bench/sflow.py's): the Debian package
# that has it, and the programs a run needs (nfdump reads what nfcapd and sfcapd write)
RIVALS = {"nfcapd": ("nfdump", ("nfcapd", "nfdump")), "nfacctd": ("pmacct", ("nfacctd",)),
          "sfcapd": ("nfdump-sflow", ("sfcapd", "nfdump")), "sfacctd": ("pmacct", ("sfacctd",))}


def available(name: str) -> bool:
    """True when rival `name` and the programs its runs need are installed."""
    if name not in RIVALS:
        raise ValueError(f"unknown collector {name!r}; expected one of {tuple(RIVALS)}")
    return all(shutil.which(program) for program in RIVALS[name][1])


def installed(names: list[str], say) -> list[str]:
    """`names` without the rivals that are not installed, each of those said with its Debian package
    (say(message)) and skipped, so a run compares what it can; imds-flow is kept."""
    keep = []
    for name in names:
        if name in OURS or available(name):
            keep.append(name)
        else:
            say(f"{name} is not installed: skipped (Debian: apt-get install {RIVALS[name][0]})")
    return keep


def start(name: str, workdir: Path, port: int = 0, rcvbuf: int = 64 << 20, timeout: float = 30) -> "Rival":
    """Start collector `name` on 127.0.0.1:`port` (0: a free port) with output under `workdir/name`.

    Returns once its socket is bound; raises RuntimeError (with the tail of its log) if it is not
    listening within `timeout` seconds.
    """
    if not available(name):
        raise RuntimeError(f"{name} is not installed")
    out = Path(workdir) / name
    out.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    argv = _nfcapd_argv(out, port, rcvbuf) if name == "nfcapd" else _nfacctd_argv(out, port, rcvbuf)
    log = open(out / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=out, start_new_session=True)
    log.close()
    rival = Rival(name, port, proc, out)
    try:
        rival._wait_listening(timeout)
    except BaseException:
        rival.kill()
        raise
    return rival


class Rival:
    """One running C collector; `stop()` ends it and reports what it decoded."""

    def __init__(self, name: str, port: int, proc: subprocess.Popen, out: Path):
        self.name, self.port, self.pid, self.out = name, port, proc.pid, out
        self.rcvbuf: int | None = None   # receive buffer the kernel granted, bytes (None: unknown)
        self._proc = proc
        self._inodes: set[int] | None = None   # its listening socket(s), once bound
        self._result: dict | None = None

    def __repr__(self) -> str:
        return f"Rival({self.name!r}, port={self.port}, pid={self.pid})"

    def __enter__(self) -> "Rival":
        return self

    def __exit__(self, *exc) -> None:
        if self._result is None:
            self.kill()

    # -- live counters -------------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        """CPU seconds so far of the collector and its child processes (tree_cpu_seconds)."""
        return tree_cpu_seconds(self.pid)

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped at this collector's socket (full receive buffer) so far."""
        return sum(row["drops"] for row in udp_sockets(self.port, self._inodes))

    def queued_bytes(self) -> int:
        """Bytes waiting in its socket receive queue."""
        return sum(row["rx_queue"] for row in udp_sockets(self.port, self._inodes))

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self, drain_timeout: float = 30.0) -> dict:
        """Drain, stop cleanly (flushing output), and count what was decoded.

        Returns {"decoded_records", "kernel_drop_datagrams", "cpu_seconds"}.
        """
        if self._result is not None:
            return self._result
        self._drain(drain_timeout)
        drops = self.kernel_drops()
        cpu = self.cpu_seconds()
        self._proc.send_signal(signal.SIGTERM if self.name == "nfcapd" else signal.SIGINT)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not exit after its stop signal; {self._log_tail()}")
        decoded = _count_nfcapd(self.out) if self.name == "nfcapd" else _count_nfacctd(self.out)
        self._result = {"decoded_records": decoded, "kernel_drop_datagrams": drops, "cpu_seconds": cpu}
        return self._result

    def kill(self) -> None:
        """Stop without counting (error paths). Kills the whole session the collector leads."""
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}; {self._log_tail()}")
            rows = udp_sockets(self.port, _socket_inodes(self.pid))
            if rows:
                self._inodes = {row["inode"] for row in rows}
                self.rcvbuf = _granted_rcvbuf(self.port)
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not listening on 127.0.0.1:{self.port} after {timeout}s; "
                           f"{self._log_tail()}")

    def _drain(self, timeout: float) -> None:
        """Wait until the receive queue is empty and the collector's CPU time has stopped moving.

        The second condition lets nfacctd's plugin finish the buffers still in the core's pipe
        and nfcapd's writer finish its blocks, so the stop signal loses nothing.
        """
        deadline = time.monotonic() + timeout
        quiet, last = 0, -1.0
        while quiet < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
            cpu = self.cpu_seconds()
            quiet = quiet + 1 if self.queued_bytes() == 0 and cpu == last else 0
            last = cpu

    def _log_tail(self, lines: int = 15) -> str:
        path = self.out / f"{self.name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "no log"
        return "log tail:\n" + "\n".join(text)


# -- command lines ---------------------------------------------------------------------------------
def _nfcapd_argv(out: Path, port: int, rcvbuf: int) -> list[str]:
    flows = out / "flows"
    flows.mkdir(exist_ok=True)
    for old in flows.glob("nfcapd.*"):     # a previous run's files would be counted again
        old.unlink()
    return ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(flows), "-B", str(rcvbuf),
            "-t", "3600", "-P", str(out / "nfcapd.pid")]


def _nfacctd_argv(out: Path, port: int, rcvbuf: int) -> list[str]:
    conf = out / "nfacctd.conf"
    csv_out = out / "flows.csv"
    csv_out.unlink(missing_ok=True)
    conf.write_text(f"""\
! written by bench/compare.py: the least work per record that still counts records
daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
nfacctd_pipe_size: {rcvbuf}
plugins: print[p]
aggregate[p]: flows
print_output[p]: csv
print_output_file[p]: {csv_out}
print_output_file_append[p]: true
print_refresh_time[p]: 3600
print_cache_entries[p]: 1021
plugin_pipe_size[p]: {NFACCTD_PLUGIN_PIPE}
plugin_buffer_size[p]: {NFACCTD_PLUGIN_BUFFER}
""")
    return ["nfacctd", "-f", str(conf)]


# -- counting --------------------------------------------------------------------------------------
_FLOWS_LINE = re.compile(rb"^Flows:\s+(\d+)\s*$", re.M)


def _count_nfcapd(out: Path) -> int:
    total = 0
    for f in sorted((out / "flows").glob("nfcapd.*")):
        r = subprocess.run(["nfdump", "-r", str(f), "-I"], capture_output=True, timeout=60)
        m = _FLOWS_LINE.search(r.stdout)
        if r.returncode != 0 or m is None:
            raise RuntimeError(f"nfdump -r {f} -I failed: {r.stderr.decode(errors='replace')[-500:]}")
        total += int(m.group(1))
    return total


def _count_nfacctd(out: Path) -> int:
    path = out / "flows.csv"
    if not path.exists():                 # nothing received: the plugin writes no file
        return 0
    total = 0
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        col = None
        for row in rows:
            if "FLOWS" in row:            # the title line
                col = row.index("FLOWS")
            elif row and col is not None:
                total += int(row[col])
    return total


# -- /proc helpers ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (so index 0 is field 3, state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds so far of a process and all its descendants (imds-flow's workers, nfacctd's plugin).

    Each process counts the run time of its threads to the nanosecond (/proc/<pid>/task/*/schedstat),
    not utime+stime alone: those come in clock ticks (10 ms), and a 3 s point at 0.3 M records/s costs
    a collector about ten of them. A thread that ended is in utime+stime only, so a process counts
    the larger of the two (they agree to a tick while its threads live; without schedstat, the ticks).
    """
    seconds = 0.0
    for pid in _process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks = (int(fields[11]) + int(fields[12])) / _CLK_TCK    # utime, stime (fields 14, 15)
            seconds += max(ticks, _threads_run_seconds(pid))
    return seconds


def _threads_run_seconds(pid: int) -> float:
    """Run time of a process's live threads (the first field of each one's schedstat, ns); 0 without."""
    ns = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return ns / 1e9


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at every UDP socket bound to `port` (full receive queue)."""
    return sum(row["drops"] for row in udp_sockets(port))


def _process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def _granted_rcvbuf(port: int) -> int | None:
    """SO_RCVBUF the kernel granted the socket on `port` (from `ss -m`), or None without ss."""
    if shutil.which("ss") is None:
        return None
    r = subprocess.run(["ss", "-Huamn", "sport", "=", f":{port}"], capture_output=True, text=True)
    m = re.search(r"\brb(\d+)", r.stdout)
    return int(m.group(1)) if m else None
