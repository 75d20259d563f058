"""Several kdh processes at once against the default SQLite store. What a user relies on: two
promotions racing leave exactly one champion, and writers on the local store either work or say to
start a server. (Concurrent writers and racing promotions against
PostgreSQL with proxied artifacts, the team setup: tests/test_team_server.py.)"""

from __future__ import annotations

import mlflow
import pytest
from processes import finish, kdh
from servers import check_races, model_variants, race_names, race_promotions

from harness import promotion
from harness.models import ModelRef, fingerprint

ROUNDS = 8
# The servers here stop: the tracking URI must not outlive them.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_tracking_uri")]


def test_two_promotions_racing_leave_exactly_one_champion(tiny_world, tmp_path):
    """Two processes promote at the same moment, ROUNDS times (half of them racing to be a model's
    first champion) on the local SQLite store: each time both end cleanly, the newer version is the
    one champion, and each version's previous champion really held the alias. The store takes one
    writer at a time (`database is locked`, retried). The same on a server, where two requests run
    at once inside it and can collide: tests/test_team_server.py; the collision's retry, forced:
    tests/test_promotion.py."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    candidates = model_variants(tiny_world.student_dir, tmp_path, 2)
    fingerprints = [fingerprint(ModelRef("c", str(c))) for c in candidates]
    names = race_names("kdh-race", ROUNDS)
    per_round, snapshots = race_promotions(uri, candidates, names, tmp_path)
    assert check_races(per_round, snapshots, names, fingerprints) == ROUNDS  # every round, both exited 0
    mlflow.set_tracking_uri(uri)
    for name in set(names):
        history = promotion.history(name)
        assert len(history) == 4 and history["champion"].sum() == 1
        assert promotion.champion_version(name).tags["kdh.fingerprint"] in fingerprints


def test_concurrent_writers_on_the_sqlite_store_work_or_say_to_use_a_server(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [kdh(["eval", "--limit", "2", "--out", str(tmp_path / f"eval{i}")], uri, tmp_path) for i in range(2)]
    for code, out, err in finish(procs):
        assert code == 0 or (code == 3 and "mlflow server" in err), err[-2000:]
