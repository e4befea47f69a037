"""Flow run names from parameters (what the Prefect UI lists)."""

from __future__ import annotations

import datetime as dt

from offclip.flows.naming import run_name

WHEN = dt.datetime(2026, 12, 3, 19, 40, 12, tzinfo=dt.timezone.utc)


def test_names_say_what_each_run_does():
    assert run_name("build-shards", {"source": "out/demo-world", "out": "/data/curated"}, WHEN) == \
        "build-shards · demo-world → curated · 2026-12-03 19:40"
    assert run_name("train", {"shards": "out/curated", "loss": "infonce", "seed": 3, "config": "demo"}, WHEN) == \
        "train · infonce · seed 3 · demo · curated · 2026-12-03 19:40"
    assert run_name("train", {"shards": "c", "loss": "infonce", "text_source": "report"}, WHEN) == \
        "train · infonce · report text · seed 0 · demo · c · 2026-12-03 19:40"
    # a config given as a file reads as its name; an explicit run directory names the run
    assert run_name("train", {"shards": "x", "config": "/c/paper.json", "run_dir": "runs/r1"}, WHEN) == \
        "train · offclip · seed 0 · paper · r1 · 2026-12-03 19:40"
    assert run_name("evaluate", {"model": "out/curated/runs/demo-offclip-seed0-abc/model", "dataset": "openi"},
                    WHEN) == "evaluate · openi · demo-offclip-seed0-abc · 2026-12-03 19:40"
    assert run_name("retrain", {"source": "w", "out": "o"}, WHEN) == "retrain · w → o · offclip · 2026-12-03 19:40"


def test_weekly_retrains_get_different_names():
    params = {"source": "out/demo-world", "out": "out/curated"}
    weeks = {run_name("retrain", params, WHEN + dt.timedelta(days=7 * k)) for k in range(4)}
    assert len(weeks) == 4
    # the stamp is UTC whatever the zone it is given in
    other = WHEN.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert run_name("retrain", params, other) == run_name("retrain", params, WHEN)
