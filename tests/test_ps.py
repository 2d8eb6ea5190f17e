"""The request process: bad lines are skipped, missing fields filled, a summary printed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import zmq

from app import cluster, config
from conftest import query

pytestmark = pytest.mark.timeout(60)

STOP_WITHIN = 5.0  # seconds a PS may take to end after SIGTERM


def test_ps_skips_bad_lines_fills_missing_fields_and_summarizes(system, catalog, tmp_path):
    _, loans = catalog
    loan = next(x for x in loans if x.sede == 1)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps({"op": "DEVOLUCION", "idUsuario": loan.reader, "idLibro": loan.book,
                    "sede": "SEDE1"}),  # no id, timestamp or key: the PS fills them
        "",
        '{"op": "PRESTAMO", "idLibro": ',  # malformed: skipped, the batch goes on
        "[1, 2]",
        json.dumps({"op": "RESERVA", "idUsuario": "U1", "idLibro": "L0001", "sede": "SEDE1"}),
        json.dumps({"op": "PRESTAMO", "idUsuario": "U0050", "idLibro": "L9999",
                    "sede": "SEDE1"}),
    ]) + "\n")

    process = system.ps("mixed", str(path), 1, stdout=subprocess.PIPE)
    out = process.communicate(timeout=30)[0].decode()

    assert process.returncode == 0
    assert "total=5 ok=1 refused=2 failed=0 skipped=2" in out
    assert "unknown operation 'RESERVA'" in out
    assert system.wait_applied(20)
    keys = query(system.db_path("primary"), "SELECT key FROM oplog WHERE op = 'DEVOLUCION'")
    assert len(keys) == 1 and keys[0][0].startswith("DEVOLUCION:S-")
    log = (tmp_path / "logs" / "ps-mixed.log").read_text()
    assert "line 3 skipped: malformed JSON" in log and "line 4 skipped" in log


def test_ps_without_a_gc_times_out_and_reports_failure(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"op": "DEVOLUCION", "idUsuario": "U1", "idLibro": "L0001",
                                "sede": "SEDE1"}) + "\n")
    port = cluster.free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "app.ps", "--file", str(path), "--endpoint",
         f"tcp://127.0.0.1:{port}", "--timeout_ms", "200", "--retries", "2"],
        capture_output=True, text=True, timeout=30)

    assert result.returncode == 1
    assert "total=1 ok=0 refused=0 failed=1 skipped=0" in result.stdout
    assert result.stderr.count("no answer in 200 ms") == 3


def test_config_file_supplies_required_flags(tmp_path):
    path = tmp_path / "actor.toml"
    path.write_text('kind = "loan"\nsede = 2\nga = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]\n')
    p = config.parser("test")
    p.add_argument("--kind", required=True)
    p.add_argument("--sede", type=int)
    p.add_argument("--ga")
    args = config.parse(p, ["--config", str(path), "--sede", "1"])
    assert (args.kind, args.sede, args.ga) == ("loan", 1, ["tcp://127.0.0.1:1",
                                                           "tcp://127.0.0.1:2"])


def test_config_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('colour = "blue"\n')
    with pytest.raises(SystemExit):
        config.parse(config.parser("test"), ["--config", str(path)])


@pytest.mark.parametrize("flags, message", [
    (["--window", "0"], "--window must be"),
    (["--rate", "nan"], "--rate must be"),
    (["--rate", "-5"], "--rate must be"),
    (["--timeout_ms", "0"], "--timeout_ms must be"),
    (["--retries", "-1"], "--retries must be"),
])
def test_ps_refuses_settings_out_of_range(tmp_path, flags, message):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"op": "DEVOLUCION", "idUsuario": "U1", "idLibro": "L0001",
                                "sede": "SEDE1"}) + "\n")
    result = subprocess.run([sys.executable, "-m", "app.ps", "--file", str(path), *flags],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("flags", [["--window", "4"], ["--rate", "500", "--window", "8"]])
def test_ps_in_flight_counts_requests_that_share_an_id(system, catalog, tmp_path, flags):
    """Answers are matched by request id: two with the same id must not overlap."""
    _, loans = catalog
    loan = next(x for x in loans if x.sede == 1)
    ret = {"op": "DEVOLUCION", "idSolicitud": "DUP-1", "idUsuario": loan.reader,
           "idLibro": loan.book, "sede": "SEDE1", "idempotencyKey": "dup-return"}
    renewal = {**ret, "op": "RENOVACION", "idempotencyKey": "dup-renewal"}
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (ret, ret, renewal)))

    process = system.ps("dup", str(path), 1, *flags, stdout=subprocess.PIPE)
    out = process.communicate(timeout=30)[0].decode()

    assert "total=3 ok=3 refused=0 failed=0" in out
    renewal_line = next(line for line in out.splitlines() if "RENOVACION DUP-1" in line)
    assert '"op": "RENOVACION"' in renewal_line  # its own answer, not the return's


def test_a_paced_ps_stops_promptly_on_sigterm(tmp_path, zctx):
    """A GC that takes requests and never answers; TERM once the first arrives."""
    silent = zctx.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"op": "DEVOLUCION", "idUsuario": f"U{i}",
                                        "idLibro": "L0001", "sede": "SEDE1"}) + "\n"
                            for i in range(1000)))
    process = subprocess.Popen(
        [sys.executable, "-m", "app.ps", "--file", str(path), "--endpoint",
         f"tcp://127.0.0.1:{port}", "--rate", "50", "--window", "8", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert silent.poll(10_000), "the PS sent nothing"
        process.send_signal(signal.SIGTERM)
        out = process.communicate(timeout=STOP_WITHIN)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1
    summary = out.strip().splitlines()[-1]
    assert "failed=" in summary and "ok=0" in summary
    total = int(summary.split("total=")[1].split()[0])
    failed = int(summary.split("failed=")[1].split()[0])
    assert 1 <= total == failed < 1000  # what was sent is reported; the rest never went
