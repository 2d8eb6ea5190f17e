"""`lab demo`: the main job on the emulated lab, from bare hosts to a verdict.

    lab up -> ansible-playbook playbooks/deploy.yml -> fab run (client host)
    -> half way: fab fault --action stop --unit ga on the primary's host
    -> the run ends on the replica, which reports `active`
    -> fab fault --action start: the old primary catches up and stays passive
    -> fab collect-metrics -> app.report -> app.checker over both databases
    -> lab down (unless --keep; also after a failure or Ctrl-C)

Every step is the command an operator would type, run from the repository root
against the lab inventory, and is printed with its duration. Logs of every
command and `steps.json` (the durations) go to `results/<run id>/demo/`.

The checker gets both storage managers' databases. The stopped primary's copy is
stale by design, so the demo starts it again first and waits until it reports
`passive` at the same (term, sequence) as the active replica, with the sequence
unchanged for QUIET_PERIOD: then both copies must be identical.

The deploy installs a snapshot of the working tree taken when the demo starts,
so edits made by others meanwhile cannot change the sources between two deploys.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import zmq

from app.lab import command, control
from app.lab.layout import PROJECT_ROOT, hosts

INVENTORIES = {4: "inventory/lab.ini", 3: "inventory/lab-3.ini"}
GA_PORT = 5570  # biblioteca_common_ports.ga in roles/biblioteca_common/defaults
RESULTS_DIR = PROJECT_ROOT / "results"

DEFAULT_PS_PER_SEDE = 2
DEFAULT_COUNT = 600  # requests per PS: the stop lands near the middle of the run
FAULT_AT = 0.1  # stop the primary once it applied this share; fab fault takes 1.5-3 s more

STATUS_TIMEOUT = 1.0  # seconds for a GA to answer a status request
POLL_INTERVAL = 0.5  # seconds between two polls of a condition
BUSY_TIMEOUT = 180.0  # seconds for the primary to reach the fault point
FAILOVER_TIMEOUT = 30.0  # seconds for the replica to report active after the stop
REJOIN_TIMEOUT = 90.0  # seconds for the old primary to catch up and the pair to go quiet
QUIET_PERIOD = 3.0  # seconds with the same (term, seq) on both GAs
DEPLOY_TIMEOUT = 900.0  # seconds for one ansible-playbook deploy
RUN_TIMEOUT = 900.0  # seconds for the run, as run.yml's run_timeout
COMMAND_TIMEOUT = 180.0  # seconds for fab fault, collect-metrics, report, checker
LOG_TAIL = 25  # lines of a failed command's log shown

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")  # as the fabfile and run.yml accept
RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)

T = TypeVar("T")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True)
class Topology:
    """Who runs what, read from the inventory with `ansible-inventory --list`."""

    inventory: Path
    hosts: list[str]
    primary: str
    replica: str
    client: str
    addresses: dict[str, str]

    def ga_endpoint(self, host: str) -> str:
        return f"tcp://{self.addresses[host]}:{GA_PORT}"


@dataclass
class Options:
    host_count: int = 4
    ps_per_sede: int = DEFAULT_PS_PER_SEDE
    count: int = DEFAULT_COUNT
    seed: int = 42
    run_id: str = ""
    keep: bool = False
    live_tree: bool = False  # deploy the working tree itself, not a snapshot

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = "demo-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        if not RUN_ID_PATTERN.match(self.run_id):
            raise DemoError(f"run id {self.run_id!r}: letters, digits, '.', '_' and '-' only")


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Recap:
    """The PLAY RECAP of one ansible-playbook run: host -> ok/changed/... counts."""

    hosts: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str) -> Recap:
        found = {
            match["host"]: {k: int(v) for k, v in match.groupdict().items() if k != "host"}
            for match in RECAP_LINE.finditer(output)
        }
        return cls(found)

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.hosts.items()}


def tool(name: str) -> str:
    """A command installed beside this Python (the venv's ansible, fab), else on PATH."""
    found = command.beside_python(name)
    if found is None:
        raise DemoError(f"{name} not found: pip install -e '.[ops]'")
    return found


def load_topology(host_count: int) -> Topology:
    inventory = PROJECT_ROOT / INVENTORIES[host_count]
    listing = subprocess.run(
        [tool("ansible-inventory"), "-i", str(inventory), "--list"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )
    if listing.returncode != 0:
        raise DemoError(f"ansible-inventory -i {inventory}: {listing.stderr.strip()}")
    data = json.loads(listing.stdout)

    def members(group: str) -> list[str]:
        entry = data.get(group, {})
        found = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            found += [host for host in members(child) if host not in found]
        return found

    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = members("biblioteca")
    return Topology(
        inventory=inventory,
        hosts=names,
        primary=members("ga_primary")[0],
        replica=members("ga_replica")[0],
        client=members("ps")[0],
        addresses={host: hostvars.get(host, {}).get("ansible_host", host) for host in names},
    )


def ga_status(endpoint: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any] | None:
    """What a live GA says about itself (role, state, term, seq...), or None if silent."""
    # Imported here: `lab down` must work even while the product's modules are mid-edit.
    from app.retry import LazyPirate

    context = zmq.Context()
    pirate = LazyPirate(context, endpoint)
    try:
        return pirate.request({"type": "status"}, timeout)
    finally:
        pirate.close()
        context.term()


def snapshot_sources() -> Path:
    """A copy of what the wheel is built from: app/ and pyproject.toml, as they are now."""
    target = Path(tempfile.mkdtemp(prefix="bib-demo-src-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "app", target / "app", ignore=ignore)
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


class Demo:
    """The steps of the main job; `lab demo` runs them all, the e2e test one by one."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.topology = load_topology(options.host_count)
        self.results = RESULTS_DIR / options.run_id
        self.log_dir = self.results / "demo"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.steps: list[Step] = []
        self.source: Path | None = None if options.live_tree else snapshot_sources()
        self._run: subprocess.Popen[bytes] | None = None
        self._run_log: Path | None = None

    # --- running and timing -----------------------------------------------------

    def step(self, name: str, action: Callable[[], T], detail: Callable[[T], str] = str) -> T:
        """Run one step, print it with its duration and record it; re-raise failures."""
        print(f"-> {name}", flush=True)
        begin = time.monotonic()
        try:
            outcome = action()
        except BaseException as error:
            seconds = time.monotonic() - begin
            self.steps.append(Step(name, seconds, False, f"{type(error).__name__}: {error}"))
            print(f"   FAILED after {seconds:.1f} s: {error}", flush=True)
            raise
        seconds = time.monotonic() - begin
        text = detail(outcome) if outcome is not None else ""
        self.steps.append(Step(name, seconds, True, text))
        print(f"   {seconds:.1f} s" + (f"  {text}" if text else ""), flush=True)
        return outcome

    def command(self, argv: list[str], log_name: str, timeout: float) -> str:
        """Run a command from the repository root, its output in a log; return the output."""
        log = self.log_dir / f"{log_name}.log"
        with log.open("w") as handle:
            try:
                result = subprocess.run(argv, cwd=PROJECT_ROOT, env=self._environment(),
                                        stdout=handle, stderr=subprocess.STDOUT,
                                        timeout=timeout, check=False)
            except subprocess.TimeoutExpired as error:
                raise DemoError(f"{argv[0]} still running after {timeout:.0f} s; see {log}") \
                    from error
        output = log.read_text()
        if result.returncode != 0:
            raise DemoError(f"{Path(argv[0]).name} exited {result.returncode}; {log}:\n"
                            + _tail(output))
        return output

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment["BIBLIOTECA_INVENTORY"] = str(self.topology.inventory)
        environment["PATH"] = f"{Path(sys.executable).parent}:{environment.get('PATH', '')}"
        environment["ANSIBLE_NOCOLOR"] = "1"
        return environment

    def _fab(self, *args: str) -> list[str]:
        return [tool("fab"), *args]

    # --- the steps --------------------------------------------------------------

    def up(self) -> str:
        report = control.up(hosts(self.options.host_count))
        return f"{len(report.started)} started, {len(report.already_up)} already up"

    def deploy(self, label: str = "deploy") -> Recap:
        argv = [tool("ansible-playbook"), "-i", str(self.topology.inventory),
                "playbooks/deploy.yml"]
        if self.source is not None:
            argv += ["-e", f"biblioteca_common_source_dir={self.source}"]
        recap = Recap.parse(self.command(argv, label, DEPLOY_TIMEOUT))
        missing = set(self.topology.hosts) - set(recap.hosts)
        if missing:
            raise DemoError(f"no PLAY RECAP line for {sorted(missing)}")
        return recap

    def start_run(self) -> str:
        argv = self._fab("run", "--ps-per-sede", str(self.options.ps_per_sede),
                         "--count", str(self.options.count), "--seed", str(self.options.seed),
                         "--run-id", self.options.run_id)
        self._run_log = self.log_dir / "run.log"
        self._run = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=self._environment(),
                                     stdout=self._run_log.open("w"), stderr=subprocess.STDOUT)
        return f"fab run pid {self._run.pid}, {self.requests()} requests"

    def requests(self) -> int:
        return 2 * self.options.ps_per_sede * self.options.count

    def wait_primary_busy(self) -> str:
        """Wait until the primary has applied FAULT_AT of the run: the middle of the run."""
        target = int(self.requests() * FAULT_AT)
        endpoint = self.topology.ga_endpoint(self.topology.primary)
        deadline = time.monotonic() + BUSY_TIMEOUT
        while time.monotonic() < deadline:
            if self._run is not None and self._run.poll() is not None:
                raise DemoError(f"the run ended before the primary reached seq {target}; "
                                "raise --count")
            state = ga_status(endpoint)
            if state is not None and state["seq"] >= target:
                return f"primary {self.topology.primary} at seq {state['seq']} (>= {target})"
            time.sleep(POLL_INTERVAL)
        raise DemoError(f"primary below seq {target} after {BUSY_TIMEOUT:.0f} s")

    def stop_primary(self) -> str:
        output = self.command(self._fab("fault", "--host", self.topology.primary,
                                        "--action", "stop", "--unit", "ga"),
                              "fault-stop", COMMAND_TIMEOUT)
        return output.strip().splitlines()[-1]

    def wait_replica_active(self) -> str:
        """The failover: the replica reports itself active (in a higher term)."""
        endpoint = self.topology.ga_endpoint(self.topology.replica)
        state = self._poll(lambda: _when(ga_status(endpoint), _is_active), FAILOVER_TIMEOUT,
                           f"replica {self.topology.replica} not active")
        return describe(self.topology.replica, state)

    def finish_run(self) -> str:
        if self._run is None or self._run_log is None:
            raise DemoError("no run started")
        try:
            code = self._run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as error:
            raise DemoError(f"run still going after {RUN_TIMEOUT:.0f} s") from error
        output = self._run_log.read_text()
        if code != 0:
            raise DemoError(f"fab run exited {code}; {self._run_log}:\n{_tail(output)}")
        successes = output.count(": success")
        return f"{successes} request processes succeeded"

    def confirm_failover(self) -> dict[str, Any]:
        """After the run: the replica is still the active one and the primary is silent."""
        replica = ga_status(self.topology.ga_endpoint(self.topology.replica))
        if replica is None or not _is_active(replica):
            raise DemoError(f"replica after the run: {replica}")
        primary = ga_status(self.topology.ga_endpoint(self.topology.primary))
        if primary is not None:
            raise DemoError(f"stopped primary answers: {primary}")
        return replica

    def rejoin_old_primary(self) -> str:
        """Start the old primary; wait until it is passive, caught up, and both are quiet."""
        self.command(self._fab("fault", "--host", self.topology.primary,
                               "--action", "start", "--unit", "ga"),
                     "fault-start", COMMAND_TIMEOUT)
        primary = self.topology.ga_endpoint(self.topology.primary)
        replica = self.topology.ga_endpoint(self.topology.replica)
        quiet_since: float | None = None
        last: tuple[int, int] | None = None
        deadline = time.monotonic() + REJOIN_TIMEOUT
        while time.monotonic() < deadline:
            old, new = ga_status(primary), ga_status(replica)
            position = _caught_up(old, new)
            if position is None:
                quiet_since, last = None, None
            elif position != last:
                quiet_since, last = time.monotonic(), position
            elif quiet_since is not None and time.monotonic() - quiet_since >= QUIET_PERIOD:
                return (f"{self.topology.primary} passive, {self.topology.replica} active, "
                        f"both at term {position[0]} seq {position[1]}")
            time.sleep(POLL_INTERVAL)
        raise DemoError(f"old primary not caught up and quiet after {REJOIN_TIMEOUT:.0f} s: "
                        f"primary {ga_status(primary)}; replica {ga_status(replica)}")

    def collect(self) -> dict[str, list[str]]:
        """fab collect-metrics; every host must bring back at least one CSV."""
        self.command(self._fab("collect-metrics", "--run-id", self.options.run_id),
                     "collect-metrics", COMMAND_TIMEOUT)
        found = {host: sorted(p.name for p in (self.results / host).glob("*.csv"))
                 for host in self.topology.hosts}
        empty = [host for host, files in found.items() if not files]
        if empty:
            raise DemoError(f"no metrics CSV collected from {empty}")
        for host in (self.topology.primary, self.topology.replica):
            if not (self.results / host / "ga.db").exists():
                raise DemoError(f"no ga.db collected from {host}")
        return found

    def report(self) -> str:
        return self.command([sys.executable, "-m", "app.report", str(self.results)],
                            "report", COMMAND_TIMEOUT)

    def databases(self) -> list[Path]:
        """Active replica first, then the old primary (caught up by rejoin_old_primary)."""
        return [self.results / host / "ga.db"
                for host in (self.topology.replica, self.topology.primary)]

    def check(self) -> str:
        argv = [sys.executable, "-m", "app.checker", "--metrics", str(self.results)]
        for database in self.databases():
            argv += ["--db", str(database)]
        return self.command(argv, "checker", COMMAND_TIMEOUT)

    def down(self) -> str:
        seconds = control.down()
        left = control.leftovers()
        if left:
            raise DemoError("lab down left: " + "; ".join(left))
        return f"nothing left ({seconds:.1f} s)"

    def stop_run(self) -> None:
        """Stop the local `fab run` if it is still going (after a failure or Ctrl-C)."""
        if self._run is not None and self._run.poll() is None:
            self._run.terminate()
            try:
                self._run.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._run.kill()
                self._run.wait(timeout=10)

    def close(self) -> None:
        """Stop the local run if needed, drop the snapshot, save the timings."""
        self.stop_run()
        if self.source is not None:
            shutil.rmtree(self.source, ignore_errors=True)
            self.source = None
        steps = [asdict(step) for step in self.steps]
        (self.log_dir / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")

    def _poll(self, probe: Callable[[], T | None], timeout: float, failure: str) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe()
            if found is not None:
                return found
            time.sleep(POLL_INTERVAL)
        raise DemoError(f"{failure} after {timeout:.0f} s")


def _is_active(state: dict[str, Any]) -> bool:
    return state.get("state") == "active"


def _when(state: dict[str, Any] | None, test: Callable[[dict[str, Any]], bool]):
    return state if state is not None and test(state) else None


def _caught_up(old: dict[str, Any] | None, new: dict[str, Any] | None) -> tuple[int, int] | None:
    """(term, seq) when the old primary is passive at the active replica's position."""
    if old is None or new is None or old.get("state") != "passive" or not _is_active(new):
        return None
    if (old["term"], old["seq"]) != (new["term"], new["seq"]):
        return None
    return (new["term"], new["seq"])


def describe(host: str, state: dict[str, Any]) -> str:
    """One line about a GA's status answer."""
    return (f"{host}: role {state['role']}, {state['state']}, term {state['term']}, "
            f"seq {state['seq']}")


def collected_text(found: dict[str, list[str]]) -> str:
    return ", ".join(f"{host}: {len(files)} CSV" for host, files in found.items())


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-LOG_TAIL:])


def recap_text(recap: Recap) -> str:
    return "changed " + ", ".join(f"{h}={n}" for h, n in recap.changed().items())


def run(options: Options) -> int:
    """The whole demo; exit status 0 only if every step and the verdict passed."""
    try:
        demo = Demo(options)
    except DemoError as error:
        print(f"lab demo: {error}", file=sys.stderr)
        return 1
    topology = demo.topology
    print(f"lab demo {options.run_id}: {options.host_count} hosts ({topology.inventory.name}), "
          f"primary GA on {topology.primary}, replica on {topology.replica}; "
          f"{options.ps_per_sede} PS per sede x {options.count} requests")
    begin = time.monotonic()
    status = 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.step("lab up", demo.up)
        demo.step("deploy (ansible-playbook playbooks/deploy.yml)", demo.deploy, recap_text)
        demo.step("start the run on the client host (fab run)", demo.start_run)
        demo.step("wait for the middle of the run", demo.wait_primary_busy)
        demo.step(f"stop the primary GA on {topology.primary}", demo.stop_primary)
        demo.step("wait for the replica to take over", demo.wait_replica_active)
        demo.step("wait for the run to complete on the replica", demo.finish_run)
        demo.step("confirm the replica is still active, the primary silent",
                  demo.confirm_failover, lambda s: describe(topology.replica, s))
        demo.step("start the old primary; wait until caught up and quiet",
                  demo.rejoin_old_primary)
        demo.step("fab collect-metrics", demo.collect,
                  collected_text)
        print(demo.step("report (python -m app.report)", demo.report, lambda _: ""))
        print(demo.step("consistency check over both GA databases", demo.check,
                        lambda _: "PASS"))
        status = 0
    except DemoError:
        status = 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        status = 130
    finally:
        demo.stop_run()
        if not options.keep:
            try:
                demo.step("lab down", demo.down)
            except (DemoError, control.LabError) as error:
                print(f"lab down: {error}", file=sys.stderr)
                status = status or 1
        demo.close()
        signal.signal(signal.SIGTERM, previous)
    _summary(demo, time.monotonic() - begin, status)
    return status


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM ends the demo like Ctrl-C: through the finally that brings the lab down."""
    raise KeyboardInterrupt(f"signal {signum}")


def _summary(demo: Demo, seconds: float, status: int) -> None:
    print(f"\n{'step':<62}{'seconds':>8}  ok")
    for step in demo.steps:
        print(f"{step.name:<62}{step.seconds:>8.1f}  {'yes' if step.ok else 'NO'}")
    verdict = "PASS" if status == 0 else "FAIL"
    print(f"{'whole demo':<62}{seconds:>8.1f}  {verdict}")
    print(f"logs and timings: {demo.log_dir}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, choices=(3, 4), default=4,
                        help="4: primary GA on lab-ga; 3: on lab-sede1 (inventory/lab-3.ini)")
    parser.add_argument("--ps-per-sede", type=int, default=DEFAULT_PS_PER_SEDE)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="requests per PS")
    parser.add_argument("--seed", type=int, default=42, help="seed of the request files")
    parser.add_argument("--run-id", default="", help="default: demo-<UTC time>")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    parser.add_argument("--live-tree", action="store_true",
                        help="deploy the working tree itself instead of a snapshot of it")


def options_from(args: argparse.Namespace) -> Options:
    return Options(host_count=args.hosts, ps_per_sede=args.ps_per_sede, count=args.count,
                   seed=args.seed, run_id=args.run_id, keep=args.keep,
                   live_tree=args.live_tree)
