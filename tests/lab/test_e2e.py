"""The main job on the emulated lab, end to end, through the steps of `lab demo`.

lab up -> deploy -> a second deploy changes nothing -> a multi-sede run from the
client host with the primary GA stopped half way -> the run completes on the
replica -> the old primary rejoins as passive -> `fab collect-metrics` brings a
CSV back from every host -> the consistency checker passes over both databases
-> lab down leaves no namespace, mount, cgroup or process.

The tests run in file order and share one lab (a module fixture); a test whose
earlier step failed is skipped, and the lab is torn down in the fixture's
finally whatever happened. The lab tests of `test_lab.py` also own the lab for
the length of their module and start with `lab down`: pytest runs one module's
tests together, so the two modules never overlap in one session (do not run them
in parallel workers). Every wait polls a condition against a deadline.

Hosts: 4 (primary GA on lab-ga) unless BIB_E2E_HOSTS=3 (primary GA on lab-sede1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from app.lab import cgroups, control, rootfs
from app.lab.layout import host_named
from app.lab.ssh import run_remote
from app.lab.demo import DEFAULT_COUNT, Demo, Options, collected_text, describe, recap_text
from app.lab.layout import STATE_DIR

HOST_COUNT = int(os.environ.get("BIB_E2E_HOSTS", "4"))
PS_PER_SEDE = 2
COUNT = DEFAULT_COUNT  # requests per PS, as `lab demo`: the stop lands mid-run

TOOLS_MISSING = [
    name
    for name in ("systemd-nspawn", "ip", "ssh")
    if shutil.which(name) is None
] + [
    name
    for name in ("ansible-playbook", "ansible-inventory", "fab")
    if not (Path(sys.executable).parent / name).exists() and shutil.which(name) is None
]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        bool(TOOLS_MISSING) or not os.path.exists("/usr/sbin/sshd"),
        reason=f"missing {TOOLS_MISSING or ['sshd']}: `bash app/lab/deps.sh` and "
        "`pip install -e '.[ops]'`",
    ),
]


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    control.down()  # whatever an earlier run left
    run_id = "e2e-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    job = Demo(Options(host_count=HOST_COUNT, ps_per_sede=PS_PER_SEDE, count=COUNT,
                       run_id=run_id))
    try:
        yield job
    finally:
        job.stop_run()
        control.down()
        job.close()
        print(f"\nsteps of {run_id}:")
        for step in job.steps:
            print(f"  {step.name:<55}{step.seconds:>7.1f} s  {'ok' if step.ok else 'FAILED'}")


@pytest.fixture(scope="module")
def passed() -> set[str]:
    """Names of the tests that passed, for the later ones that need their result."""
    return set()


def needs(passed: set[str], *earlier: str) -> None:
    missing = [name for name in earlier if name not in passed]
    if missing:
        pytest.skip(f"an earlier step failed: {', '.join(missing)}")


@pytest.mark.timeout(240)
def test_up_and_first_deploy(demo: Demo, passed: set[str]) -> None:
    demo.step("lab up", demo.up)
    recap = demo.step("first deploy", demo.deploy, recap_text)

    for host, counts in recap.hosts.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, f"{host}: {counts}"
    passed.add("deploy")


@pytest.mark.timeout(180)
def test_second_deploy_changes_nothing(demo: Demo, passed: set[str]) -> None:
    needs(passed, "deploy")

    recap = demo.step("second deploy", lambda: demo.deploy("deploy-2"), recap_text)

    changed = {host: n for host, n in recap.changed().items() if n}
    assert not changed, f"second deploy changed {changed}; see {demo.log_dir / 'deploy-2.log'}"


@pytest.mark.timeout(60)
def test_services_run_at_their_real_time_priorities(demo: Demo, passed: set[str]) -> None:
    """The deployed defaults: GC at SCHED_FIFO 10, loan actor and GA at 5, the rest normal."""
    needs(passed, "deploy")
    expected = [("lab-sede1", "biblioteca-gc", "SCHED_FIFO 10"),
                ("lab-sede1", "biblioteca-actor@loan", "SCHED_FIFO 5"),
                ("lab-sede1", "biblioteca-actor@return", "SCHED_OTHER 0"),
                (demo.topology.primary, "biblioteca-ga", "SCHED_FIFO 5"),
                (demo.topology.replica, "biblioteca-ga", "SCHED_FIFO 5")]
    for host, unit, policy in expected:
        probe = (f"chrt -p $(systemctl show -p MainPID --value {unit}) | "
                 "sed -n 's/.*policy: //p; s/.*priority: //p' | tr '\\n' ' '")
        result = run_remote(host_named(host), [probe], timeout=20)
        assert result.stdout.strip() == policy, f"{host} {unit}: {result.stdout}{result.stderr}"


@pytest.mark.timeout(150)
def test_run_completes_on_the_replica_after_the_primary_stops(
    demo: Demo, passed: set[str]
) -> None:
    needs(passed, "deploy")

    demo.step("start the run", demo.start_run)
    demo.step("wait for the middle of the run", demo.wait_primary_busy)
    demo.step("stop the primary GA", demo.stop_primary)
    demo.step("wait for the replica to take over", demo.wait_replica_active)
    demo.step("wait for the run to complete", demo.finish_run)
    replica = demo.step("confirm the failover", demo.confirm_failover,
                        lambda state: describe(demo.topology.replica, state))

    assert replica["state"] == "active"
    assert replica["term"] >= 1
    assert replica["seq"] > 0
    passed.add("run")


@pytest.mark.timeout(120)
def test_old_primary_rejoins_and_metrics_come_back_from_every_host(
    demo: Demo, passed: set[str]
) -> None:
    needs(passed, "run")

    demo.step("old primary rejoins, pair quiet", demo.rejoin_old_primary)
    found = demo.step("fab collect-metrics", demo.collect, collected_text)

    assert sorted(found) == sorted(demo.topology.hosts)
    for host, files in found.items():
        assert files, f"no CSV from {host}"
    client_files = found[demo.topology.client]
    run_files = [f for f in client_files if f.endswith(f"-{demo.options.run_id}.csv")]
    assert len(run_files) == 2 * PS_PER_SEDE, client_files
    passed.add("collect")


@pytest.mark.timeout(60)
def test_consistency_checker_passes(demo: Demo, passed: set[str]) -> None:
    needs(passed, "collect")

    verdict = demo.step("consistency check", demo.check, lambda _: "")

    print(verdict)
    assert "consistency check: PASS" in verdict


@pytest.mark.timeout(60)
def test_down_leaves_nothing(demo: Demo) -> None:
    demo.step("lab down", demo.down)

    assert control.leftovers() == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10, check=True).stdout
    assert "bib-" not in netns
    state_dir = str(STATE_DIR.resolve())
    assert rootfs.lab_mounts() == []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        assert not [line for line in mounts if state_dir in line]
    assert cgroups.lab_cgroups() == []
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                               timeout=10, check=True).stdout
    assert "app.lab.supervisor" not in processes
    assert not [line for line in processes.splitlines()
                if "systemd-nspawn" in line and state_dir in line]
