"""Start, query and stop one real Asterisk in its own run directory and process group."""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any
from dataclasses import dataclass, field, fields
from pathlib import Path

from sim.cluster import free_port
from sim.real_asterisk import confs
from sim.real_asterisk.install import Installation, RealAsteriskUnavailable, install

STATE = "state.json"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 15.0
SOCKET_PATH_MAX = 100  # a unix socket path has at most 107 bytes; asterisk.ctl lives in <run>/run/


def default_run_root() -> Path:
    return Path(os.environ.get("VA_ASTERISK_RUN_ROOT") or f"/tmp/voice-agent-asterisk-{os.getuid()}")


@dataclass
class RealAsterisk:
    """A running real Asterisk. `stop()` (or leaving the `with` block) ends it and its process group."""

    ari_url: str  # http://127.0.0.1:PORT (ARI is under /ari)
    user: str
    password: str
    app: str  # the Stasis app of the shipped dialplan
    run_dir: Path | None  # None: an Asterisk the harness did not start (connect()); no CLI, never stopped
    version: str  # system.version of GET /ari/asterisk/info
    pid: int
    prefix: Path | None
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)  # when started by us

    def __enter__(self) -> RealAsterisk:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def own_run_dir(self) -> Path:
        """The run directory of an Asterisk the harness started; RealAsteriskUnavailable for any other."""
        if self.run_dir is None:
            raise RealAsteriskUnavailable(f"the Asterisk at {self.ari_url} was not started by the harness")
        return self.run_dir

    @property
    def installation(self) -> Installation:
        if self.prefix is None:
            raise RealAsteriskUnavailable(f"the Asterisk at {self.ari_url} was not started by the harness")
        return Installation(self.prefix, "", "")

    @property
    def conf(self) -> Path:
        return self.own_run_dir / "etc" / "asterisk.conf"

    def cli(self, command: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run one CLI command through the run directory's control socket (`asterisk -rx`); its output."""
        if self.run_dir is None:
            raise RealAsteriskUnavailable(f"no CLI for the Asterisk at {self.ari_url}: the harness did not start it")
        argv = self.installation.command("-C", str(self.conf), "-rx", command)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RealAsteriskUnavailable(f"asterisk -rx {command!r}: no answer within {timeout}s") from None
        if done.returncode != 0:
            raise RealAsteriskUnavailable(
                f"asterisk -rx {command!r} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
        return done.stdout

    @property
    def started_here(self) -> bool:
        return self.run_dir is not None

    def running(self) -> bool:
        if not self.started_here:
            return self.ari("GET", "/asterisk/info")[0] == 200
        if self._proc is not None:  # our child: poll() also collects its exit status (no zombie left)
            return self._proc.poll() is None
        return _alive(self.pid, self.conf)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """`core stop now`, then SIGTERM and SIGKILL to the process group if it is still there after `timeout`."""
        if not self.started_here or not self.running():
            return
        try:
            self.cli("core stop now", timeout=timeout)
        except RealAsteriskUnavailable:
            pass  # the signals below end it anyway
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._wait_gone(timeout):
                return
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
        if not self._wait_gone(timeout):
            raise RealAsteriskUnavailable(f"Asterisk pid {self.pid} survived SIGKILL")

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def ari(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """One ARI request (`path` under /ari); (status, decoded JSON or None)."""
        req = urllib.request.Request(
            f"{self.ari_url}/ari{path}", method=method, headers={"Authorization": _basic(self.user, self.password)}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, None
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def save_state(self) -> Path:
        path = self.own_run_dir / STATE
        state = {f.name: str(getattr(self, f.name)) for f in fields(self) if not f.name.startswith("_")}
        path.write_text(json.dumps(state, indent=1) + "\n")
        return path

    @classmethod
    def from_state(cls, run_dir: Path) -> RealAsterisk:
        data = json.loads((run_dir / STATE).read_text())
        return cls(
            data["ari_url"],
            data["user"],
            data["password"],
            data["app"],
            Path(data["run_dir"]),
            data["version"],
            int(data["pid"]),
            Path(data["prefix"]),
        )


def start(
    run_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    log=print,
    timeout: float = START_TIMEOUT,
    rtp_ports: int = 200,
) -> RealAsterisk:
    """Install (cached) and start a real Asterisk in a fresh `run_dir` (default: a new one under the run root);
    return once ARI answers. `rtp_ports`: the size of its RTP port range (rtp.conf); each RTP stream takes an
    even port and its RTCP the next, so 200 ports hold 100 streams (50 calls with an RTP leg at both ends)."""
    if rtp_ports < 2 or rtp_ports % 2:
        raise ValueError(f"rtp_ports must be an even number >= 2, got {rtp_ports}")
    inst = install(cache_dir, log=log)
    run = Path(run_dir) if run_dir else default_run_root() / f"ast-{secrets.token_hex(4)}"
    run = run.resolve()
    if len(str(run / "run" / "asterisk.ctl")) > SOCKET_PATH_MAX:
        raise RealAsteriskUnavailable(f"run directory {run} is too long a path for Asterisk's control socket")
    if (run / STATE).exists() and RealAsterisk.from_state(run).running():
        raise RealAsteriskUnavailable(f"an Asterisk already runs in {run} (stop it first)")
    # A range of its own, so instances rarely share RTP ports; below the kernel's ephemeral ports (32768 up on
    # Linux), where the test callers' sockets take theirs, and above the harnesses' media workers (below 20000).
    low = random.randrange(20000, max(20001, 32768 - rtp_ports), 200)
    cfg = confs.RunConfig(run, free_port(), (low, low + rtp_ports - 1), confs.ari_user(), secrets.token_urlsafe(18))
    try:
        confs.write_run_dir(inst, cfg)
        out = open(run / "log" / "asterisk.out", "wb")
    except OSError as exc:
        raise RealAsteriskUnavailable(f"cannot write the run directory {run}: {exc}") from None
    started = time.monotonic()
    # -f: stay in the foreground (no fork, no console); a session of its own so stop() can signal the group.
    proc = subprocess.Popen(
        inst.command("-f", "-n", "-C", str(cfg.conf)),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=run,
    )
    out.close()
    ast = RealAsterisk(
        f"http://127.0.0.1:{cfg.http_port}",
        cfg.user,
        cfg.password,
        confs.SHIPPED_APP,
        run,
        "",
        proc.pid,
        inst.prefix,
        proc,
    )
    try:
        ast.version = _wait_ready(ast, proc, timeout)
    except BaseException:
        ast.stop(timeout=3)
        raise
    ast.save_state()
    log(f"real Asterisk {ast.version} up in {time.monotonic() - started:.2f}s: ARI {ast.ari_url} (run dir {run})")
    return ast


def start_or_explain(run_dir: Path) -> RealAsterisk | None:
    """For the demo and the load test: a real Asterisk in `run_dir`, or None after printing why there is none."""
    try:
        return start(run_dir)
    except RealAsteriskUnavailable as exc:
        print(f"no real Asterisk: {exc}")
        return None


def connect(ari_url: str, user: str, password: str, app: str = confs.SHIPPED_APP, timeout: float = 3.0) -> RealAsterisk:
    """An Asterisk someone else runs, once its ARI answers `GET /asterisk/info` with these credentials."""
    ast = RealAsterisk(ari_url.rstrip("/"), user, password, app, None, "", 0, None)
    deadline = time.monotonic() + timeout
    status, info = ast.ari("GET", "/asterisk/info")
    while status != 200 and status != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, info = ast.ari("GET", "/asterisk/info")
    if status != 200:
        why = "wrong ARI user or password" if status == 401 else f"HTTP {status}" if status else "nothing answers"
        raise RealAsteriskUnavailable(f"ARI at {ast.ari_url}: {why}")
    ast.version = info["system"]["version"]
    return ast


def _wait_ready(ast: RealAsterisk, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RealAsteriskUnavailable(
                f"Asterisk exited with {proc.returncode} while starting:\n" + _log_tail(ast.own_run_dir)
            )
        status, info = ast.ari("GET", "/asterisk/info", timeout=1)
        if status == 200:
            return info["system"]["version"]
        time.sleep(0.05)
    raise RealAsteriskUnavailable(
        f"ARI at {ast.ari_url} did not answer within {timeout}s:\n" + _log_tail(ast.own_run_dir)
    )


def _log_tail(run: Path, lines: int = 15) -> str:
    text = ""
    for name in ("asterisk.out", "messages.log"):
        try:
            text += (run / "log" / name).read_text(errors="replace")
        except OSError:
            pass
    return "\n".join(text.strip().splitlines()[-lines:]) or f"(nothing in {run / 'log'})"


def _alive(pid: int, conf: Path) -> bool:
    """Whether `pid` is still this run's Asterisk (not a recycled pid, not a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return str(conf).encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
