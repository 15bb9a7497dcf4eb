"""bench/run.py: one entry point, JSON lines, and a README table that is its recorded output."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import run as bench_run  # noqa: E402
from bench.figures import Figure  # noqa: E402

KEYS = ["name", "value", "unit", "baseline", "against", "ratio"]


def test_a_figure_is_one_json_line_with_its_ratio() -> None:
    line = Figure("x.y", 3.0, "s", 1.5, "floor").line()
    assert "\n" not in line
    data = json.loads(line)
    assert list(data) == KEYS
    assert data["ratio"] == 2.0
    assert json.loads(Figure("x.y", 3.0, "s").line())["ratio"] is None


@pytest.mark.parametrize("module", sorted(bench_run.MODULES))
def test_every_benchmark_module_offers_figures(module: str) -> None:
    loaded = importlib.import_module(module)
    assert callable(loaded.figures)
    assert callable(loaded.main)


def test_a_broken_module_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def good(quick: bool) -> Iterator[Figure]:
        yield Figure("good.one", 1.0, "s", 2.0, "floor")

    def bad(quick: bool) -> Iterator[Figure]:
        raise RuntimeError("boom")
        yield  # pragma: no cover

    modules = {"fake_bad": bad, "fake_good": good}
    for name, fn in modules.items():
        module = ModuleType(name)
        module.figures = fn  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
    results = list(bench_run.run(["fake_bad", "fake_good"], quick=True, only=[]))
    assert isinstance(results[0], str) and "boom" in results[0]
    assert results[1] == Figure("good.one", 1.0, "s", 2.0, "floor")


def test_the_recorded_run_is_complete_and_described() -> None:
    recorded = bench_run.recorded()
    names = [data["name"] for data in recorded]
    assert len(names) == len(set(names))
    for data in recorded:
        assert list(data) == KEYS, data
        assert data["name"] in bench_run.DESCRIPTIONS, data["name"]
        if data["baseline"]:
            # ratios are rounded to 3 decimals: a small one is off by up to 0.0005
            assert data["ratio"] == pytest.approx(
                data["value"] / data["baseline"], rel=1e-2, abs=5e-4
            )
    # Every module's figures are in it: the README's table covers the whole entry point.
    for prefixes in bench_run.MODULES.values():
        assert any(name.startswith(prefixes) for name in names), prefixes


def test_the_readme_table_is_the_rendering_of_the_recorded_run() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = bench_run.readme_block(text)
    expected = bench_run.render(bench_run.recorded())
    assert text[start:end].strip() == expected.strip(), (
        "README's performance table drifted: run `.venv/bin/python bench/run.py --readme`"
    )
