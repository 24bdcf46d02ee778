"""The replication report: reference file validation, value lookup, verdicts, rendering, checks."""

import json
import textwrap
from pathlib import Path

import pytest

from cryo_orient.workflow import report

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = textwrap.dedent("""
    headline = ["e-median", "curve@2"]

    [kinds.error]
    unit = "rad"
    tolerance = {abs = 0.05}
    better = "lower"

    [kinds.count]
    tolerance = {exact = true}

    [kinds.tiny]
    tolerance = {below = 1e-8}

    [[value]]
    id = "e-median"
    target = "figure-10"
    kind = "error"
    quantity = "E_OR median"
    paper = 0.20
    source = "Fig. 10a"
    ours = ["results", "{datasets[0]}", "E_OR_median"]
    needs = "5j0n"

    [[value]]
    id = "e-stand-in"
    target = "figure-10"
    kind = "error"
    quantity = "E_OR median, second protein"
    paper = 0.12
    source = "Fig. 10c"
    ours = ["results", "{datasets[1]}", "E_OR_median"]
    needs = "5a1a"

    [[value]]
    id = "curve"
    target = "figure-7"
    kind = "error"
    quantity = "E_OR"
    sweep_name = "sigma"
    sweep = [1, 2, 3]
    paper = [0.1, 0.2, 0.3]
    source = "Fig. 7"
    ours = ["results", "runs", {mode = "faithful", sigma = "{x}"}, "E_OR"]

    [[value]]
    id = "pairs"
    target = "table-1"
    kind = "count"
    quantity = "pairs"
    paper = 63101
    source = "Table 1"
    ours = ["results", "training", "used_pairs"]

    [[disagreement]]
    topic = "Loss"
    text = "squared"
    code = "absolute"
    followed = "the code"
""")


def _record(target, parameters, results, outputs=None):
    return {
        "target": target,
        "outputs": outputs or [f"{target}.png"],
        "parameters": parameters,
        "results": results,
        "provenance": {"git_commit": "0123456789abcdef"},
    }


@pytest.fixture
def setup(tmp_path):
    ref = tmp_path / "reference.toml"
    ref.write_text(REFERENCE)
    figs = tmp_path / "figures"
    figs.mkdir()
    records = {
        "figure-10": _record(
            "figure-10",
            {"datasets": ["5j0n-full", "ribosome-quarter"]},
            {"5j0n-full": {"E_OR_median": 0.23}, "ribosome-quarter": {"E_OR_median": 0.8}},
        ),
        "figure-7": _record(
            "figure-7",
            {},
            {
                "runs": [
                    {"mode": "faithful", "sigma": 1.0, "E_OR": 0.1},
                    {"mode": "improved", "sigma": 1.0, "E_OR": 0.9},
                    {"mode": "faithful", "sigma": 2.0, "E_OR": 0.01, "steps": 10, "seconds": 4.5},
                    {"mode": "faithful", "sigma": 3.0, "E_OR": 0.9},
                ]
            },
        ),
    }
    for target, record in records.items():
        (figs / f"{target}.json").write_text(json.dumps(record))
        (figs / f"{target}.png").write_bytes(b"png")
    return ref, figs, records


def test_the_project_reference_file_is_valid_and_resolves_on_the_committed_cpu_records():
    ref = report.load_reference(ROOT / "experiments" / "paper-reference.toml")
    assert len(ref["value"]) > 50 and len(ref["disagreement"]) >= 6
    records = report.load_records(ROOT / "figures" / "cpu")
    comparisons = report.compare(ref, records)
    # Every path in the reference points at a number of the committed cpu records.
    missing = [(c.id, c.detail) for c in comparisons if c.verdict == "not measured" and c.target in records]
    assert not missing
    # Table 1 is the same split as the paper's: exact.
    assert all(c.verdict == "reproduced" for c in comparisons if c.target == "table-1")


def test_verdicts():
    assert report.verdict(0.22, 0.20, {"abs": 0.05}, "lower") == "reproduced"
    assert report.verdict(0.10, 0.20, {"abs": 0.05}, "lower") == "better"
    assert report.verdict(0.30, 0.20, {"abs": 0.05}, "lower") == "not reproduced"
    assert report.verdict(0.10, 0.20, {"abs": 0.05}, None) == "not reproduced"
    assert report.verdict(0.10, 0.20, {"abs": 0.05}, "higher") == "not reproduced"
    assert report.verdict(0.23, 0.20, {"rel": 0.2}, None) == "reproduced"
    assert report.verdict(0.25, 0.20, {"rel": 0.2}, None) == "not reproduced"
    assert report.verdict(2e-9, 5e-11, {"below": 1e-8}) == "reproduced"
    assert report.verdict(2e-8, 5e-11, {"below": 1e-8}) == "not reproduced"
    assert report.verdict(63101, 63101, {"exact": True}) == "reproduced"
    assert report.verdict(63100, 63101, {"exact": True}) == "not reproduced"
    assert report.verdict(5.0, 1.0, {"none": True}) == "shown"


def test_compare_resolves_placeholders_selectors_sweeps_and_stand_ins(setup):
    ref_path, figs, _ = setup
    ref = report.load_reference(ref_path)
    got = {c.id: c for c in report.compare(ref, report.load_records(figs))}
    assert got["e-median"].ours == 0.23 and got["e-median"].verdict == "reproduced"
    assert got["e-stand-in"].verdict == "not comparable" and "ribosome-quarter" in got["e-stand-in"].detail
    assert got["curve@1"].ours == 0.1 and got["curve@1"].verdict == "reproduced"
    assert got["curve@2"].verdict == "better"
    assert got["curve@3"].verdict == "not reproduced"
    assert got["pairs"].verdict == "not measured" and "table-1" in got["pairs"].detail


def test_resolve_explains_what_is_missing():
    record = {
        "parameters": {"datasets": ["a"]},
        "results": {"a": {"x": 1.0, "s": "text"}, "runs": [{"k": 1}, {"k": 1}]},
    }
    assert report.resolve(record, ["results", "{datasets[0]}", "x"]) == (1.0, "results/a/x")
    with pytest.raises(LookupError, match="no key 'y'"):
        report.resolve(record, ["results", "a", "y"])
    with pytest.raises(LookupError, match="not a number"):
        report.resolve(record, ["results", "a", "s"])
    with pytest.raises(LookupError, match="2 elements"):
        report.resolve(record, ["results", "runs", {"k": 1}])
    with pytest.raises(LookupError, match="no element 3"):
        report.resolve(record, ["results", "{datasets[3]}"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: (
                t
                + '\n[[value]]\nid = "x"\ntarget = "t"\nkind = "error"\nquantity = "q"\npaper = 1\nsource = "s"\n'
                + 'ours = ["a"]\nunit = "rad"\n'
            ),
            "unknown key",
        ),
        (
            lambda t: t.replace('kind = "count"\nquantity = "pairs"', 'kind = "counts"\nquantity = "pairs"'),
            "kind 'counts' is not defined",
        ),
        (lambda t: t.replace("paper = [0.1, 0.2, 0.3]", "paper = [0.1, 0.2]"), "as long as sweep"),
        (lambda t: t.replace('id = "pairs"', 'id = "curve"'), "used twice"),
        (lambda t: t.replace("{abs = 0.05}", "{abs = 0.05, rel = 0.1}"), "tolerance must be one of"),
        (lambda t: t.replace('"curve@2"', '"nothing"'), "no \\[\\[value\\]\\] id"),
        (lambda t: t.replace('followed = "the code"', ""), "keys must be exactly"),
        (lambda t: t + "\nstray = 1\n[x]\n", "unknown top-level"),
    ],
)
def test_bad_reference_files_are_refused_with_the_reason(tmp_path, edit, message):
    path = tmp_path / "ref.toml"
    path.write_text(edit(textwrap.dedent(REFERENCE)))
    with pytest.raises(report.ReportError, match=message):
        report.load_reference(path)


def test_missing_or_broken_reference_file(tmp_path):
    with pytest.raises(report.ReportError, match="no reference file"):
        report.load_reference(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[kinds\n")
    with pytest.raises(report.ReportError, match="not valid TOML"):
        report.load_reference(tmp_path / "bad.toml")


def test_write_report_and_check(setup, tmp_path):
    ref_path, figs, _ = setup
    (figs / "figure-2.json").write_text(
        json.dumps(_record("figure-2", {"seed": 3}, {}, outputs=["figure-2.png", "figure-2.md"]))
    )
    (figs / "figure-2.png").write_bytes(b"png")
    (figs / "figure-2.md").write_text("# A table\n\n| a |\n|---|\n| 1 |\n")
    targets = ["figure-10", "figure-7", "figure-2", "table-1"]
    md, page = report.write_report(
        "cpu", fig_dir=figs, reference_path=ref_path, targets=targets, experiments_dir=tmp_path, notebooks_dir=tmp_path
    )
    text = md.read_text()
    # Sections in figure order, then tables; a target without a record is flagged.
    assert text.index('<a id="figure-2">') < text.index('<a id="figure-7">') < text.index('<a id="figure-10">')
    assert "**Not built**: `figures/<profile>/table-1.json`" in text
    assert "| reproduced | 2 |" in text and "| not comparable | 1 |" in text
    assert "| Loss | squared | absolute | the code |" in text
    assert "seed 3" in text and "![figure-2](figure-2.png)" in text
    assert "\n### A table\n" in text and "| a |" in text  # a table output, its heading demoted
    assert "### Headline numbers" in text and "E_OR median" in text
    assert "<table>" in page.read_text() and "<img" in page.read_text()
    problems = report.check_report(figs, targets)
    assert problems == ["REPORT.md: table-1 is not built"]
    (figs / "figure-2.png").unlink()
    assert any("figure-2.png, which does not exist" in p for p in report.check_report(figs, ["figure-2"]))
    assert any("no section for figure-9" in p for p in report.check_report(figs, ["figure-9"]))


def test_recorded_stage_seconds_count_each_cached_run_once():
    records = {
        "a": {
            "results": {
                "x": {"training_seconds": 10.0, "recovery_seconds": 2.0},
                "runs": [{"steps": 5, "seconds": 1.5}],
            }
        },
        "b": {
            "results": {"x": {"estimator": {"seconds": 10.0}, "reconstruction_seconds": {"truth": 3.0, "random": 4.0}}}
        },
    }
    stages = report.recorded_stage_seconds(records)
    assert stages["distance learning (train one estimator)"] == [10.0]
    assert stages["orientation recovery"] == [1.5, 2.0]
    assert stages["reconstruction (one volume)"] == [3.0, 4.0]


def test_target_order():
    assert report.target_order(["table-1", "figure-10", "compare", "figure-2"]) == [
        "figure-2",
        "figure-10",
        "table-1",
        "compare",
    ]


def test_readme_headline_table_is_the_one_of_the_committed_cpu_records():
    """README.md shows the cpu profile's headline numbers; they must be today's records' numbers.
    After rebuilding figures/cpu, refresh it with `cryo-orient report --profile cpu --readme README.md`."""
    expected = report.headline_for(
        "cpu", fig_dir=ROOT / "figures" / "cpu", reference_path=ROOT / "experiments" / "paper-reference.toml"
    )
    assert report.readme_headline(ROOT / "README.md") == expected


def test_update_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\nrest\n")
    assert report.update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{report.README_BEGIN}\n| new |\n{report.README_END}\nrest\n"
    assert report.readme_headline(readme) == "| new |\n"
    assert not report.update_readme(readme, "| new |\n")
    readme.write_text("no markers\n")
    with pytest.raises(report.ReportError, match="no headline markers"):
        report.update_readme(readme, "x")


@pytest.mark.parametrize("profile", ["tiny", "cpu", "paper"])
def test_every_profile_builds_every_figure_and_table(profile):
    """`make reproduce` of any profile, hence its report, covers figures 1-18 and Table 1."""
    from cryo_orient.workflow.profiles import load_profile

    sections = set(load_profile(profile, root=ROOT))
    wanted = {f"figure-{n}" for n in range(1, 19)} | {"table-1"}
    assert wanted <= sections, sorted(wanted - sections)
    notebooks = {p.stem for p in (ROOT / "experiments").glob("*.py")}
    assert wanted <= notebooks
