"""kill -9 of the primary GA mid-run: the replica serves, nothing acknowledged is lost.

Then the old primary comes back, catches up as passive, and the handover command
gives it the writer role back. At no moment may two GAs write in the same term:
the GA logs say who became active in which term, the oplogs say who wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from app import cluster
from test_faults import (APPLIED_WAIT, PATIENT_PS, caught_up, finish_ps, ga_field, ps_counts,
                         query, seq_reached, start_ps, verdict_for, wait_for, writers_per_term,
                         write_requests)

RUNS = int(os.environ.get("FAILOVER_RUNS", "1"))  # repeat the kill -9 scenario
KILL_AT_SEQ = 1500  # primary log entries before the kill (of about 5,000)


def kill_primary_mid_run(tmp_path, run: int) -> cluster.Cluster:
    """4 PS x 1,250 mixed requests over both sedes; the primary dies at KILL_AT_SEQ."""
    files = write_requests(str(tmp_path / "req"), 2, 1250, seed=100 + run)
    system = cluster.Cluster(str(tmp_path / "run"), run_id=f"failover{run}")
    try:
        system.start_all()
        processes = start_ps(system, files, *PATIENT_PS)
        wait_for(lambda: seq_reached(system, "primary", KILL_AT_SEQ), what="primary under way")

        system.signal("ga-primary", signal.SIGKILL)
        finish_ps(processes)
        assert system.wait_applied(APPLIED_WAIT)
    except BaseException:
        system.stop()
        raise
    return system


@pytest.mark.timeout(400)
@pytest.mark.parametrize("run", range(RUNS))
def test_kill_primary_ga_mid_run(tmp_path, run):
    with kill_primary_mid_run(tmp_path, run) as system:
        assert ga_field(system, "backup", "state") == "active"
        replica_only = verdict_for(system, "backup")
        assert replica_only.ok, replica_only.render()

        system.start("ga-primary")
        wait_for(lambda: caught_up(system), what="old primary caught up")
        assert ga_field(system, "primary", "state") == "passive"
        both = verdict_for(system, "backup", "primary")
    assert ps_counts(system, "failed") == 0
    assert both.checked["loans answered"] > 0
    assert both.ok, both.render()


@pytest.mark.timeout(400)
def test_old_primary_catches_up_then_takes_the_role_back(tmp_path):
    with kill_primary_mid_run(tmp_path, 0) as system:
        system.start("ga-primary")
        wait_for(lambda: caught_up(system), what="old primary caught up")
        primary, backup = system.ga_status("primary"), system.ga_status("backup")
        assert (primary["state"], backup["state"]) == ("passive", "active")
        assert primary["term"] == backup["term"] > 0

        writers = writers_per_term(system)
        assert all(len(roles) == 1 for roles in writers.values()), writers
        db = {r: system.db_path(r) for r in ("primary", "backup")}
        oplog = "SELECT seq, key, term FROM oplog ORDER BY seq"
        assert query(db["primary"], oplog) == query(db["backup"], oplog)

        backup_endpoint, primary_endpoint = system.ga_endpoints()[1], system.ga_endpoints()[0]
        cli = subprocess.run([sys.executable, "-m", "app.handover", "--ga", backup_endpoint,
                              "--peer", primary_endpoint], capture_output=True, text=True,
                             timeout=60)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "handover done" in cli.stdout
        assert ga_field(system, "primary", "state") == "active"

        # Writes go to the primary again, in a new term of its own.
        term = ga_field(system, "primary", "term")
        files = write_requests(str(tmp_path / "after"), 1, 100, seed=999, mix="published",
                               tag="H")
        finish_ps(start_ps(system, files, *PATIENT_PS, tag="H"))
        assert system.wait_applied(APPLIED_WAIT)
        wait_for(lambda: caught_up(system), what="replica caught up after the handover")
        in_new_term = query(db["primary"], "SELECT count(*) FROM oplog WHERE term = ?", term)
        writers = writers_per_term(system)
        both = verdict_for(system, "primary", "backup")
    assert in_new_term[0][0] > 0
    assert writers[term] == {"primary"}
    assert all(len(roles) == 1 for roles in writers.values()), writers
    assert both.ok, both.render()
