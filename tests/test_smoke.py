from pathlib import Path


def test_show_counters(cli, counters_archive: Path) -> None:
    r = cli("show", counters_archive)
    assert r.code == 0, r.err
    assert "counter" in r.out
