"""Start, watch and stop a whole lending system as local processes on loopback.

Used by the demo, the tests and the benchmarks: every component runs as its own
``python -m app.<component>`` process on free loopback ports, with its log in
``<workdir>/logs`` and its metrics in ``<workdir>/metrics``. Every process
started here is stopped by ``stop()`` (TERM, then KILL after STOP_GRACE), which
the context manager calls also when the body fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import zmq

from app import priority, protocol, seed
from app.retry import LazyPirate

STOP_GRACE = 5.0  # seconds between TERM and KILL
READY_TIMEOUT = 15.0  # seconds a component may take to answer its first ping
POLICY_WAIT = 3.0  # seconds a process may take to switch to the real-time priority asked
LOOPBACK = "127.0.0.1"
TOPIC = {"return": protocol.RETURN, "renewal": protocol.RENEWAL}  # what each subscribes to


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on.

    Each socket stays bound until all are chosen: closed one by one, the kernel
    may hand the same port out twice, and two components would then race for it.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def endpoint(port: int) -> str:
    return f"tcp://{LOOPBACK}:{port}"


@dataclass
class Component:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None


@dataclass
class Cluster:
    workdir: str
    sedes: tuple[int, ...] = (1, 2)
    replica: bool = True
    run_id: str = "local"
    catalog_seed: int = 42
    ga_timeout: float | None = None
    extra: dict[str, list[str]] = field(default_factory=dict)  # per component name
    # Real-time priority by kind of process (ps, gc, loan, return, renewal, ga);
    # e.g. priority.RECOMMENDED. Kinds left out run at normal priority.
    realtime: dict[str, int] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logs = os.path.join(self.workdir, "logs")
        self.metrics = os.path.join(self.workdir, "metrics")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.metrics, exist_ok=True)
        self.context = zmq.Context()
        names = ["ga-primary", "ga-backup"] + [
            f"gc{sede}-{part}" for sede in self.sedes
            for part in ("requests", "publish", "confirm", "loan")]
        self.ports.update(zip(names, free_ports(len(names))))

    # -- addresses and paths ---------------------------------------------------

    def db_path(self, role: str) -> str:
        return os.path.join(self.workdir, f"ga-{role}.db")

    def ga_endpoints(self) -> list[str]:
        roles = ("primary", "backup") if self.replica else ("primary",)
        return [endpoint(self.ports[f"ga-{r}"]) for r in roles]

    def gc_endpoint(self, sede: int) -> str:
        return endpoint(self.ports[f"gc{sede}-requests"])

    # -- building the process list ---------------------------------------------

    def _common(self) -> list[str]:
        return ["--metrics_dir", self.metrics, "--run_id", self.run_id, "--host", "local"]

    def define(self) -> None:
        """Describe every component; seeds the databases that do not exist yet."""
        roles = ("primary", "backup") if self.replica else ("primary",)
        for role in roles:
            if not os.path.exists(self.db_path(role)):
                seed.write(self.db_path(role), self.catalog_seed)
            other = "backup" if role == "primary" else "primary"
            peer = endpoint(self.ports[f"ga-{other}"]) if self.replica else ""
            self._add(f"ga-{role}", "ga", "app.ga", [
                "--role", role, "--db", self.db_path(role),
                "--bind", endpoint(self.ports[f"ga-{role}"]), "--peer", peer])
        ga = ",".join(self.ga_endpoints())
        timeout = ["--ga_timeout", str(self.ga_timeout)] if self.ga_timeout else []
        for sede in self.sedes:
            ports = {part: endpoint(self.ports[f"gc{sede}-{part}"])
                     for part in ("requests", "publish", "confirm", "loan")}
            self._add(f"gc{sede}", "gc", "app.gc", [
                "--sede", str(sede), "--bind", ports["requests"], "--publish",
                ports["publish"], "--confirm", ports["confirm"], "--loan_actor",
                ports["loan"], "--state_dir", self.workdir])
            for kind in ("loan", "return", "renewal"):
                self._add(f"{kind}{sede}", kind, "app.actor", [
                    "--kind", kind, "--sede", str(sede), "--ga", ga, "--bind", ports["loan"],
                    "--gc_publish", ports["publish"], "--gc_confirm", ports["confirm"],
                    *timeout])

    def _priority(self, kind: str) -> list[str]:
        level = self.realtime.get(kind, 0)
        return ["--realtime", str(level)] if level else []

    def _start_at(self, kind: str) -> Callable[[], bool] | None:
        """What a new process of this kind runs before it starts: with real-time
        priorities, it takes its own at once, as a systemd unit would start it, so
        processes started while others already run are not kept waiting behind them
        while they load. Refused (no privilege): the process asks for it itself later."""
        if not self.realtime:
            return None
        level = self.realtime.get(kind, 0)
        return functools.partial(priority.set_for_this_thread, level)

    @contextlib.contextmanager
    def launching(self) -> Iterator[None]:
        """Start processes from above all of them: with real-time priorities, this
        process (when allowed) runs above the highest while the block lasts, so the
        processes it starts first cannot delay the start of the next ones."""
        top = max(self.realtime.values(), default=0)
        raised = bool(top) and priority.set_for_this_thread(min(top + 1, priority.HIGHEST))
        try:
            yield
        finally:
            if raised:
                priority.set_for_this_thread(0)

    def _add(self, name: str, kind: str, module: str, args: list[str]) -> None:
        argv = [sys.executable, "-m", module, *args, *self._common(), *self._priority(kind),
                *self.extra.get(name, [])]
        self.components[name] = Component(name, argv)

    # -- running -----------------------------------------------------------------

    def start(self, name: str) -> None:
        component = self.components[name]
        log = open(os.path.join(self.logs, f"{name}.log"), "ab")
        component.process = subprocess.Popen(component.argv, stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL,
                                             start_new_session=True,
                                             preexec_fn=self._start_at(kind_of(name)))
        log.close()

    def start_all(self) -> None:
        """GAs first, then per sede loan actor, GC and the subscribers; waits for pings."""
        self.define()
        with self.launching():
            for name in self.components:
                if name.startswith("ga-"):
                    self.start(name)
            for sede in self.sedes:
                for name in (f"loan{sede}", f"gc{sede}", f"return{sede}", f"renewal{sede}"):
                    self.start(name)
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        checks = [(n, {"type": "ping"}, endpoint(self.ports[n])) for n in self.components
                  if n.startswith("ga-")]
        for sede in self.sedes:
            checks.append((f"gc{sede}", {"type": "status"}, self.gc_endpoint(sede)))
            checks.append((f"loan{sede}", {"type": "ping"},
                           endpoint(self.ports[f"gc{sede}-loan"])))
        for name, message, address in checks:
            while self.ask(address, message, 0.5) is None:
                self.assert_alive(name)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not answer within {READY_TIMEOUT} s")
        # A subscriber not yet subscribed when the PS start would miss what is
        # published before (the GC republishes it, but only after a while).
        for sede in self.sedes:
            topics = {TOPIC[kind_of(name)] for name in self.started_subscribers(sede)}
            while not topics <= set((self.gc_status(sede) or {}).get("subscribed", [])):
                self.assert_alive(f"gc{sede}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sede {sede}: no subscriber to {sorted(topics)} "
                                       f"within {READY_TIMEOUT} s")
                time.sleep(0.02)
        for name, component in self.components.items():  # an answer may have come
            if component.process is not None:              # from another process
                self.assert_alive(name)

    def started_subscribers(self, sede: int) -> list[str]:
        return [name for name in (f"return{sede}", f"renewal{sede}")
                if name in self.components and self.components[name].process is not None]

    def assert_alive(self, name: str) -> None:
        process = self.components[name].process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{name} exited; see {self.logs}/{name}.log")

    def ask(self, address: str, message: dict[str, Any], timeout_s: float
            ) -> dict[str, Any] | None:
        pirate = LazyPirate(self.context, address)
        try:
            return pirate.request(message, timeout_s)
        finally:
            pirate.close()

    def gc_status(self, sede: int) -> dict[str, Any] | None:
        return self.ask(self.gc_endpoint(sede), {"type": "status"}, 2.0)

    def ga_status(self, role: str) -> dict[str, Any] | None:
        return self.ask(endpoint(self.ports[f"ga-{role}"]), {"type": "status"}, 2.0)

    def ps(self, name: str, path: str, sede: int, *args: str,
           stdout: Any = subprocess.DEVNULL) -> subprocess.Popen:
        """Start one request process against its sede's GC."""
        argv = [sys.executable, "-m", "app.ps", "--file", path, "--endpoint",
                self.gc_endpoint(sede), "--name", name, "--sede", f"SEDE{sede}",
                *self._common(), *self._priority("ps"), *args]
        log = open(os.path.join(self.logs, f"ps-{name}.log"), "ab")
        process = subprocess.Popen(argv, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True, preexec_fn=self._start_at("ps"))
        log.close()
        self.components[f"ps-{name}"] = Component(f"ps-{name}", argv, process)
        return process

    def scheduling(self) -> dict[str, str]:
        """How each running process is scheduled: "normal" or "FIFO <priority>".

        A process asks for its priority once it has started, so one that was
        asked to and has not yet is looked at again, for up to POLICY_WAIT.
        """
        seen = {}
        deadline = time.monotonic() + POLICY_WAIT
        for name, component in self.components.items():
            process = component.process
            wanted = self.realtime.get(kind_of(name))
            while process is not None and process.poll() is None:
                try:
                    level = priority.level_of(process.pid)
                except OSError:  # it ended meanwhile
                    break
                seen[name] = f"FIFO {level}" if level else "normal"
                if not wanted or level or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        return seen

    def wait_applied(self, timeout_s: float) -> bool:
        """Wait until every GC's outbox is empty (every return/renewal confirmed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = [self.gc_status(s) for s in self.sedes]
            if all(s is not None and s["pending"] == 0 for s in statuses):
                return True
            time.sleep(0.2)
        return False

    def signal(self, name: str, signum: int) -> None:
        process = self.components[name].process
        if process is not None and process.poll() is None:
            process.send_signal(signum)
            if signum == signal.SIGKILL:
                process.wait(STOP_GRACE)

    def stop_one(self, name: str) -> None:
        process = self.components[name].process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE)

    def stop(self) -> None:
        for name in reversed(list(self.components)):
            self.stop_one(name)
        if not self.context.closed:
            self.context.term()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kind_of(name: str) -> str:
    """A component's kind: ``gc1`` -> ``gc``, ``ga-backup`` -> ``ga``, ``ps-sede1-2`` -> ``ps``."""
    return name.split("-")[0].rstrip("0123456789")


def request_count(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
