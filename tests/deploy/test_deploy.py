"""Checks of the deployment code that need no host: rendering, units, lint, syntax.

Every template is rendered by Ansible itself (tests/deploy/render.yml, local connection)
from each inventory; no inventory address is contacted. The lab end-to-end deploy is
not here: it needs `lab up` (see docs/deploy.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ["lab.ini", "lab-3.ini", "example-3vm.ini", "example-4vm.ini"]
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
MANAGED_HEADER = "#\n# Ansible managed\n#\n"
# The bound of one ansible or lint command, in seconds.
COMMAND_TIMEOUT = 240


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install ansible-core ansible-lint yamllint)")
    return found


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, **kwargs)


def _inventory(name: str) -> dict:
    listing = _run([_tool("ansible-inventory"), "-i", f"inventory/{name}", "--list"])
    assert listing.returncode == 0, listing.stderr
    return json.loads(listing.stdout)


def _group(data: dict, name: str) -> list[str]:
    entry = data.get(name, {})
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts += [h for h in _group(data, child) if h not in hosts]
    return hosts


def _address(data: dict, host: str) -> str:
    return data["_meta"]["hostvars"].get(host, {}).get("ansible_host", host)


@pytest.fixture(scope="module", params=INVENTORIES)
def rendered(request, tmp_path_factory):
    """(inventory data, folder with one subfolder of rendered files per host)."""
    out = tmp_path_factory.mktemp(request.param.replace(".", "-"))
    result = _run([_tool("ansible-playbook"), "-i", f"inventory/{request.param}",
                   "-c", "local", "tests/deploy/render.yml", "-e", f"render_dir={out}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    yield _inventory(request.param), out
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("name", INVENTORIES)
def test_inventory_has_one_primary_and_one_replica(name):
    data = _inventory(name)
    primary, replica = _group(data, "ga_primary"), _group(data, "ga_replica")
    assert len(primary) == 1 and len(replica) == 1 and primary != replica
    assert _group(data, "gc") == _group(data, "actors")
    assert len(_group(data, "ps")) == 1
    for sede in (1, 2):
        (host,) = _group(data, f"sede{sede}")
        assert data["_meta"]["hostvars"][host]["biblioteca_sede"] == sede
    four_hosts = len(_group(data, "biblioteca")) == 4
    assert (primary == _group(data, "storage")) is four_hosts
    assert (primary == _group(data, "sede1")) is not four_hosts


def test_every_file_renders_with_the_managed_header(rendered):
    data, out = rendered
    for host in _group(data, "biblioteca"):
        files = sorted((out / host).iterdir())
        assert files, f"nothing rendered for {host}"
        for path in files:
            assert path.read_text().startswith(MANAGED_HEADER), path


def test_configs_parse_and_point_at_inventory_addresses(rendered):
    data, out = rendered
    address = {h: _address(data, h) for h in _group(data, "biblioteca")}
    primary, replica = _group(data, "ga_primary")[0], _group(data, "ga_replica")[0]
    ga = [f"tcp://{address[primary]}:5570", f"tcp://{address[replica]}:5570"]

    for host, peer, role in ((primary, replica, "primary"), (replica, primary, "backup")):
        config = tomllib.loads((out / host / "ga.toml").read_text())
        assert config["role"] == role
        assert config["peer"] == f"tcp://{address[peer]}:5570"

    for sede in (1, 2):
        (host,) = _group(data, f"sede{sede}")
        gc = tomllib.loads((out / host / "gc.toml").read_text())
        assert gc["sede"] == sede and gc["loan_actor"] == f"tcp://{address[host]}:5580"
        for kind in ("loan", "return", "renewal"):
            actor = tomllib.loads((out / host / f"actor-{kind}.toml").read_text())
            assert actor["kind"] == kind and actor["sede"] == sede and actor["ga"] == ga
            assert actor["gc_publish"] == f"tcp://{address[host]}:5560"
            assert ("bind" in actor) is (kind == "loan")
        (client,) = _group(data, "ps")
        ps = tomllib.loads((out / client / f"ps-sede{sede}-1.toml").read_text())
        assert ps["endpoint"] == f"tcp://{address[host]}:5555" and ps["sede"] == sede


def test_configs_use_only_known_keys(rendered):
    """The contract's keys (docs/components.md), so the processes accept every file."""
    keys = {
        "ga": {"role", "bind", "peer", "db"},
        "gc": {"sede", "bind", "publish", "confirm", "loan_actor", "state_dir"},
        "actor": {"kind", "sede", "gc_publish", "gc_confirm", "bind", "ga"},
        "ps": {"file", "endpoint", "interval", "timeout_ms", "retries", "sede", "name"},
    }
    common = {"metrics_dir", "run_id", "host", "log_level", "realtime"}
    _, out = rendered
    for path in out.rglob("*.toml"):
        component = path.name.split("-")[0].removesuffix(".toml")
        unknown = set(tomllib.loads(path.read_text())) - keys[component] - common
        assert not unknown, f"{path}: {unknown}"


def test_units_pass_systemd_analyze_verify(rendered, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is absent (apt-get install systemd)")
    data, out = rendered
    # A root with the host's system units and a stand-in for the venv's python, so
    # verify checks our units, not the absence of a deployment on this machine.
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    python = root / "opt/biblioteca/venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    names = set()
    for path in out.rglob("*.service"):
        shutil.copy(path, units / path.name)
        names.add(path.name)
    instances = {"biblioteca-actor@.service": "biblioteca-actor@loan.service",
                 "biblioteca-ps@.service": "biblioteca-ps@sede1-1.service"}
    targets = sorted(instances.get(name, name) for name in names)
    assert len(targets) == 4

    result = subprocess.run([analyze, "verify", f"--root={root}", *targets],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "biblioteca" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_units_carry_the_hardening(rendered):
    _, out = rendered
    for path in out.rglob("*.service"):
        text = path.read_text()
        for line in ("Type=exec", "User=biblioteca", "ProtectSystem=strict",
                     "NoNewPrivileges=yes", "PrivateTmp=yes", "Environment=PYTHONUNBUFFERED=1"):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), f"{path}: {line}"
        assert re.search(r"^StateDirectory=.*biblioteca/metrics", text, re.M), path
        batch = path.name.startswith("biblioteca-ps@")
        assert ("Restart=no" in text) is batch and ("[Install]" in text) is not batch
        assert ("Restart=on-failure" in text) is not batch, path


def test_each_process_may_take_the_priority_its_config_asks_for(rendered):
    """Real-time priorities as recommended (app.priority), no higher than the unit starts
    the process at (it may only lower its own without privilege)."""
    _, out = rendered
    unit_of = {"gc": "biblioteca-gc.service", "ga": "biblioteca-ga.service",
               "actor": "biblioteca-actor@.service", "ps": "biblioteca-ps@.service"}
    asked, starts = {}, {}
    for path in out.rglob("*.toml"):
        config = tomllib.loads(path.read_text())
        component = path.name.split("-")[0].removesuffix(".toml")
        kind = config["kind"] if component == "actor" else component
        unit = (path.parent / unit_of[component]).read_text()
        start = re.findall(r"^CPUSchedulingPriority=(\d+)$", unit, re.M)
        assert bool(start) == bool(re.search(r"^CPUSchedulingPolicy=fifo$", unit, re.M))
        assert 0 <= config["realtime"] <= int(start[0] if start else 0), path
        asked[kind] = config["realtime"]
        starts[component] = int(start[0] if start else 0)
    assert asked == {"ps": 10, "gc": 10, "loan": 5, "ga": 5, "return": 0, "renewal": 0}
    assert starts == {"ps": 10, "gc": 10, "actor": 5, "ga": 5}


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook):
    result = _run([_tool("ansible-playbook"), "--syntax-check", f"playbooks/{playbook}"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_is_clean():
    result = _run([_tool("yamllint"), "--strict", "."])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(COMMAND_TIMEOUT + 30)
def test_ansible_lint_production_is_clean():
    result = _run([_tool("ansible-lint"), "--profile", "production", "--offline"])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]


def test_fabfile_lists_its_tasks():
    result = _run([_tool("fab"), "--list"])
    assert result.returncode == 0, result.stderr
    for name in ("collect-metrics", "fault", "link", "run", "status"):
        assert name in result.stdout
