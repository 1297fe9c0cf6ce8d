"""Takeover by the standby controller: `kill -9` of the leading controller with calls up, to the standby leading
with the ARI events WebSocket connected and the calls reconciled.

    .venv/bin/python bench/takeover.py [--rounds 10] [--calls 5] [--lease-ms 1000] [--redis redis://127.0.0.1:6379/9]

Two real controller processes on the real Redis; the Asterisk simulator and a test AudioSocket listener (registered
as a media worker) run in this process. Each round kills the leader, waits for the standby to lead (its /readyz,
and its log line "calls reconciled N ms after taking the lease"), checks every call is still bridged with its
media leg, hangs one up (torn down by the new leader), and starts a new standby, as a supervisor would.
Reports the kill → reconciled time (p50, p95, max) and, of it, the lease-taken → reconciled part.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from functools import partial
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.controller_rig import ControllerRig  # noqa: E402
from sim.asterisk import AsteriskSim  # noqa: E402
from sim.cluster import LocalCluster, RoleProcess  # noqa: E402
from tests.ari_harness import percentile  # noqa: E402

RECONCILED = re.compile(r"calls reconciled (\d+) ms after taking the lease")


def leads(proc: RoleProcess) -> bool:
    return (
        proc.popen.poll() is None
        and bool(RECONCILED.search(proc.log_text()))
        and proc.readiness().get("leadership") == "leading"
        and proc.ready()
    )


def standby_ready(proc: RoleProcess) -> bool:
    return proc.ready() and proc.readiness().get("leadership") == "standby"


async def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<52} n={len(values):<3} p50 {percentile(values, 50):7.1f}  p95 {percentile(values, 95):7.1f}  "
        f"max {max(values):7.1f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    rig = await ControllerRig.start(args.redis, "bench-takeover-", capacity=args.calls * (args.rounds + 2))
    sim, listener = rig.sim, rig.listener
    env = {**rig.env, "LOG_LEVEL": "info"}  # the standby's "reconciled" line gives the time after the lease
    config = rig.config()
    data = yaml.safe_load(config.read_text())
    data["controller"]["leader_lease_ms"] = args.lease_ms
    config.write_text(yaml.safe_dump(data))
    cluster = LocalCluster(config, rig.workdir, env)
    total, after_lease = [], []
    started = iter(range(1, 1000))

    def new_controller() -> RoleProcess:
        return cluster.start("controller", instance_id=f"controller-{next(started)}")  # ids never reused

    try:
        leader = new_controller()
        await wait(lambda: leads(leader), 30, "the first leader")
        standby = new_controller()
        await wait(lambda: standby_ready(standby), 30, "a standby")
        calls = []
        for _ in range(args.rounds):
            for _ in range(args.calls):
                calls.append(await sim.place_call(send_silence=False))
            await listener.wait_for(len(calls), timeout=30)
            await asyncio.sleep(0.3)  # the last setups finish
            leader.popen.kill()
            killed = time.monotonic()
            await wait(partial(leads, standby), 15, "the standby to take over")
            total.append((time.monotonic() - killed) * 1000)
            match = RECONCILED.search(standby.log_text())
            assert match is not None
            after_lease.append(float(match.group(1)))
            leader.popen.wait()
            cluster.processes.remove(leader)
            for call in calls:
                members = {c.id for c in sim.bridges[f"{_call_id(sim, call)}-br"].members}
                if call.channel_id not in members or len(members) != 2:
                    raise SystemExit(f"call {call.channel_id} lost its bridge or media leg in the takeover")
            await calls.pop(0).hangup()  # torn down by the new leader
            leader, standby = standby, new_controller()
            await wait(partial(standby_ready, standby), 30, "a standby")
        for call in calls:
            await call.hangup()
        await wait(lambda: not sim.channels and not sim.bridges, 30, "every call torn down")
    finally:
        cluster.stop_all()
        await rig.stop(keep_workdir=True)
    print(f"{args.rounds} takeovers, {args.calls} new calls up before each, lease {args.lease_ms} ms")
    print(summary("kill -9 of the leader -> standby leads, reconciled", total))
    print(summary("  of which lease taken -> ARI connected, reconciled", after_lease))


def _call_id(sim: AsteriskSim, call) -> str:
    """The call id of a simulated caller, from the bridge it is in (`{call id}-br`)."""
    for bridge_id, bridge in sim.bridges.items():
        if any(c.id == call.channel_id for c in bridge.members):
            return bridge_id.removesuffix("-br")
    raise SystemExit(f"call {call.channel_id} is in no bridge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=5, help="new calls placed before each kill")
    parser.add_argument("--lease-ms", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
