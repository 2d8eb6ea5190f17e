"""The request process: bad lines are skipped, missing fields filled, a summary printed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app import cluster, config
from conftest import query

pytestmark = pytest.mark.timeout(60)


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
