"""The capacity search's rule for a level: the SLO, and with `max_growth` also the latency admitted sessions keep."""

from __future__ import annotations

from minmo.load.runner import CapacitySearch, meets_slo
from minmo.load.stats import LevelResult


def _level(sessions: int, *first_audio_ms: float) -> LevelResult:
    result = LevelResult(sessions=sessions, turns_ok=len(first_audio_ms))
    for ms in first_audio_ms:
        result.first_audio.record(ms)
    return result


def test_without_max_growth_the_slo_alone_decides():
    search = CapacitySearch(slo_ms=1000, levels=[_level(1, 800, 850)])
    assert search.limit_ms() == 1000
    assert meets_slo(_level(3, 900, 990), search.limit_ms())


def test_max_growth_tightens_the_limit_to_that_factor_of_the_one_session_p95():
    search = CapacitySearch(slo_ms=1000, max_growth=1.2, levels=[_level(1, 700, 800)])
    assert abs(search.limit_ms() - 1.2 * search.baseline_p95_ms) < 1e-9 and search.limit_ms() < 1000
    assert meets_slo(_level(2, 800, 900), search.limit_ms())
    assert not meets_slo(_level(3, 900, 990), search.limit_ms()), "within the SLO, but 1.24x the unloaded p95"
    report = search.to_json()
    assert report["max_growth"] == 1.2 and report["limit_ms"] == search.limit_ms()


def test_max_growth_never_loosens_the_slo():
    search = CapacitySearch(slo_ms=1000, max_growth=1.5, levels=[_level(1, 900, 950)])
    assert search.limit_ms() == 1000
