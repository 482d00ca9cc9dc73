"""The threads x batch x calls-at-once table that --workers is chosen from."""

from scanside.bench import concurrency
from scanside.runtime.parallel import physical_cores


def test_every_row_is_measured_on_the_engines_unet(tiny_engine, tmp_path, capsys):
    result = concurrency.measure(tiny_engine, size=64, repeat=1, batches=(1, 2))
    cores = physical_cores()
    combos = {(r["threads"], r["batch"], r["calls_at_once"]) for r in result["rows"]}
    expected = {(t, b, 1) for t in {1, cores} for b in (1, 2)}
    if cores > 1:
        expected.add((1, 1, cores))
    assert combos == expected
    assert all(r["seconds_per_image"] > 0 for r in result["rows"])
    assert concurrency.main([str(tiny_engine), "--size", "64", "--repeat", "1",
                             "--json", str(tmp_path / "c.json")]) == 0
    assert "s per image" in capsys.readouterr().out and (tmp_path / "c.json").is_file()
