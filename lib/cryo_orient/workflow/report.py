"""The replication report: our measured numbers beside the paper's, with tolerances and verdicts.

``figures/<profile>/REPORT.md`` (and ``REPORT.html``) is built from two inputs only: the JSON
records that the figure notebooks wrote into ``figures/<profile>/`` and the reference file
``experiments/paper-reference.toml``, the one place where the paper's numbers live (as reference
values: they are never an output of the pipeline). For every reported number the report gives
ours, the paper's, the tolerance we hold ourselves to and a verdict:

``reproduced``
    within the tolerance;
``better``
    beyond the tolerance on the side the reference marks as better (e.g. a lower error);
``not reproduced``
    beyond the tolerance otherwise;
``not comparable``
    the profile uses a stand-in (e.g. another protein where the paper's map is not available);
``not measured``
    the record or the value is missing;
``shown``
    illustrative numbers with no tolerance.

It also lists where the authors' text and code disagree (and which we followed), and the run
time of every stage, read from the notebooks' execution metadata and from the artifacts.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import math
import re
import tomllib
from collections import Counter
from pathlib import Path

from markdown_it import MarkdownIt

from cryo_orient import artifacts

REFERENCE_FILE = Path("experiments/paper-reference.toml")
REPORT_NAME = "REPORT.md"
HTML_NAME = "REPORT.html"
#: README.md holds the cpu profile's headline table between these lines (``--readme``).
README_BEGIN = "<!-- headline table: written by `cryo-orient report --profile cpu --readme README.md` -->"
README_END = "<!-- end of headline table -->"

VERDICTS = ("reproduced", "better", "not reproduced", "not comparable", "not measured", "shown")

_VALUE_KEYS = {"id", "target", "kind", "quantity", "paper", "source", "ours", "needs", "note", "sweep", "sweep_name"}
_KIND_KEYS = {"unit", "tolerance", "better"}
_TOLERANCE_KEYS = {"abs", "rel", "below", "exact", "none"}
_DISAGREEMENT_KEYS = {"topic", "text", "code", "followed"}
_TOP_KEYS = {"kinds", "value", "disagreement", "headline"}

# Seconds recorded by the stages themselves when an artifact was first computed (a cached re-run
# reads them back): key in a record -> stage.
_STAGE_KEYS = {
    "training_seconds": "distance learning (train one estimator)",
    "recovery_seconds": "orientation recovery",
    "reconstruction_seconds": "reconstruction (one volume)",
    "aspire_seconds": "common lines (ASPIRE)",
}


class ReportError(ValueError):
    """A reference file or a record that the report cannot use as it is."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One reported number of the paper set beside ours."""

    id: str
    target: str
    quantity: str
    paper: float
    ours: float | None
    unit: str
    tolerance: dict
    better: str | None
    verdict: str
    source: str
    note: str = ""
    detail: str = ""  # why a value is not measured / not comparable


# ---------------------------------------------------------------------------------- reference
def load_reference(path=REFERENCE_FILE) -> dict:
    """Read and validate the reference file; every unknown key or inconsistency is an error."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no reference file {path}; it holds the paper's values (see README.md, 'Report')")
    try:
        with open(path, "rb") as f:
            ref = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ReportError(f"{path} is not valid TOML: {err}") from err

    def fail(message):
        raise ReportError(f"{path}: {message}")

    if unknown := sorted(set(ref) - _TOP_KEYS):
        fail(f"unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    kinds = ref.get("kinds", {})
    for name, kind in kinds.items():
        if unknown := sorted(set(kind) - _KIND_KEYS):
            fail(f"[kinds.{name}]: unknown key(s) {unknown}; allowed: {sorted(_KIND_KEYS)}")
        tol = kind.get("tolerance")
        if not isinstance(tol, dict) or len(tol) != 1 or not set(tol) <= _TOLERANCE_KEYS:
            fail(
                f"[kinds.{name}]: tolerance must be one of {{abs = x}}, {{rel = r}}, {{below = b}}, "
                f"{{exact = true}}, {{none = true}}; got {tol!r}"
            )
        ((tkind, tval),) = tol.items()
        if tkind in ("abs", "rel", "below") and not (isinstance(tval, (int, float)) and tval >= 0):
            fail(f"[kinds.{name}]: tolerance {tkind} must be a number >= 0, got {tval!r}")
        if kind.get("better") not in (None, "lower", "higher"):
            fail(f"[kinds.{name}]: better must be 'lower' or 'higher', got {kind['better']!r}")
    seen = set()
    for i, value in enumerate(ref.get("value", [])):
        where = f"[[value]] #{i + 1} ({value.get('id', 'no id')})"
        if unknown := sorted(set(value) - _VALUE_KEYS):
            fail(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_VALUE_KEYS)}")
        if missing := sorted({"id", "target", "kind", "quantity", "paper", "source", "ours"} - set(value)):
            fail(f"{where}: missing key(s) {missing}")
        if value["id"] in seen:
            fail(f"{where}: id {value['id']!r} is used twice")
        seen.add(value["id"])
        if value["kind"] not in kinds:
            fail(f"{where}: kind {value['kind']!r} is not defined; defined: {sorted(kinds)}")
        if not isinstance(value["ours"], list) or not value["ours"]:
            fail(f"{where}: ours must be a non-empty list of keys")
        paper = value["paper"]
        if "sweep" in value:
            if not isinstance(paper, list) or len(paper) != len(value["sweep"]):
                fail(f"{where}: paper must be a list as long as sweep ({len(value['sweep'])} values)")
        elif not isinstance(paper, (int, float)) or isinstance(paper, bool):
            fail(f"{where}: paper must be a number (or a list with a sweep), got {paper!r}")
    for i, entry in enumerate(ref.get("disagreement", [])):
        if set(entry) != _DISAGREEMENT_KEYS:
            fail(f"[[disagreement]] #{i + 1}: keys must be exactly {sorted(_DISAGREEMENT_KEYS)}, got {sorted(entry)}")
    for id_ in ref.get("headline", []):
        if id_.split("@")[0] not in seen:
            fail(f"headline names {id_!r}, which is no [[value]] id")
    return ref


# ---------------------------------------------------------------------------------- resolving
def _fill(text: str, parameters: dict, x) -> str:
    """Fill ``{name}`` / ``{name[i]}`` placeholders from the record's parameters (and ``{x}``)."""

    def one(match):
        name, index = match.group(1), match.group(2)
        if name == "x":
            return _key_text(x)
        if name not in parameters:
            raise LookupError(f"the record's parameters have no {name!r}")
        value = parameters[name]
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise LookupError(f"parameter {name!r} has no element {index}")
            value = value[int(index)]
        return str(value)

    return re.sub(r"\{(\w+)(?:\[(\d+)\])?\}", one, text)


def _key_text(x) -> str:
    return str(int(x)) if isinstance(x, (int, float)) and float(x).is_integer() else str(x)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def resolve(record: dict, path: list, x=None) -> tuple[float, str]:
    """Follow ``path`` into a record; return the number and the path as text.

    Raises ``LookupError`` with the reason when a step does not exist.
    """
    parameters = record.get("parameters", {})
    node, shown = record, []
    for step in path:
        if isinstance(step, dict):
            want = {
                k: (x if v == "{x}" else _fill(v, parameters, x) if isinstance(v, str) else v) for k, v in step.items()
            }
            if not isinstance(node, list):
                raise LookupError(f"{'/'.join(shown)} is not a list to select {want} from")
            hits = [
                item
                for item in node
                if isinstance(item, dict) and all(k in item and _same(item[k], v) for k, v in want.items())
            ]
            if len(hits) != 1:
                raise LookupError(f"{len(hits)} elements of {'/'.join(shown)} match {want}")
            node = hits[0]
            shown.append("[" + ",".join(f"{k}={v}" for k, v in want.items()) + "]")
        elif isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise LookupError(f"{'/'.join(shown)} has no element {step}")
            node = node[step]
            shown.append(str(step))
        else:
            key = _fill(step, parameters, x)
            if not isinstance(node, dict) or key not in node:
                raise LookupError(f"{'/'.join(shown) or 'the record'} has no key {key!r}")
            node = node[key]
            shown.append(key)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise LookupError(f"{'/'.join(shown)} is {node!r}, not a number")
    if not math.isfinite(node):
        raise LookupError(f"{'/'.join(shown)} is {node}")
    return float(node), "/".join(shown)


def verdict(ours: float, paper: float, tolerance: dict, better: str | None = None) -> str:
    """``reproduced``, ``better``, ``not reproduced`` or ``shown`` (see the module docstring)."""
    ((kind, value),) = tolerance.items()
    if kind == "none":
        return "shown"
    if kind == "exact":
        return "reproduced" if ours == paper else "not reproduced"
    if kind == "below":
        return "reproduced" if ours <= value else "not reproduced"
    allowed = value if kind == "abs" else value * abs(paper)
    delta = ours - paper
    if abs(delta) <= allowed * (1 + 1e-12):
        return "reproduced"
    if (better == "lower" and delta < 0) or (better == "higher" and delta > 0):
        return "better"
    return "not reproduced"


def compare(reference: dict, records: dict) -> list[Comparison]:
    """Every reference value against the records (``target -> record dict``)."""
    out = []
    for value in reference.get("value", []):
        kind = reference["kinds"][value["kind"]]
        sweep = value.get("sweep")
        points = list(zip(sweep, value["paper"])) if sweep is not None else [(None, value["paper"])]
        for x, paper in points:
            quantity = value["quantity"]
            if x is not None:
                quantity += f" ({value.get('sweep_name', 'x')} = {_key_text(x)})"
            common = dict(
                id=value["id"] if x is None else f"{value['id']}@{_key_text(x)}",
                target=value["target"],
                quantity=quantity,
                paper=float(paper),
                unit=kind.get("unit", ""),
                tolerance=kind["tolerance"],
                better=kind.get("better"),
                source=value["source"],
                note=value.get("note", ""),
            )
            record = records.get(value["target"])
            if record is None:
                out.append(
                    Comparison(ours=None, verdict="not measured", detail=f"no record {value['target']}.json", **common)
                )
                continue
            try:
                ours, where = resolve(record, value["ours"], x)
            except LookupError as err:
                out.append(Comparison(ours=None, verdict="not measured", detail=str(err), **common))
                continue
            if value.get("needs") and value["needs"] not in where:
                out.append(
                    Comparison(
                        ours=ours,
                        verdict="not comparable",
                        detail=f"this profile measures {where}, a stand-in for {value['needs']}",
                        **common,
                    )
                )
                continue
            out.append(
                Comparison(
                    ours=ours,
                    verdict=verdict(ours, float(paper), kind["tolerance"], kind.get("better")),
                    detail=where,
                    **common,
                )
            )
    return out


# ---------------------------------------------------------------------------------- inputs
def target_order(targets) -> list[str]:
    """Figures by number, then tables, then anything else (e.g. ``compare``)."""

    def key(name):
        m = re.fullmatch(r"(figure|table)-(\d+)", name)
        return (0 if m and m.group(1) == "figure" else 1 if m else 2, int(m.group(2)) if m else 0, name)

    return sorted(targets, key=key)


def load_records(fig_dir) -> dict:
    """``target -> record`` for every ``<target>.json`` record in ``fig_dir``."""
    records = {}
    for path in sorted(Path(fig_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path} is not valid JSON ({err}); rebuild it with `make {path.stem}`") from err
        if isinstance(record, dict) and "outputs" in record and "results" in record:
            records[record.get("target", path.stem)] = record
    return records


def notebook_title(target: str, experiments_dir="experiments") -> str:
    """The first ``# <title>`` heading of the target's notebook, or the target's name."""
    path = Path(experiments_dir) / f"{target}.py"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("# # "):
                return line[4:].strip()
    return target


def notebook_seconds(notebooks_dir, target: str) -> float | None:
    """Wall time of the target's last notebook run (papermill's metadata), if it exists."""
    path = Path(notebooks_dir) / f"{target}.ipynb"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
    except json.JSONDecodeError:
        return None
    duration = meta.get("duration")
    return float(duration) if isinstance(duration, (int, float)) else None


def recorded_stage_seconds(records: dict) -> dict:
    """``stage -> list of seconds`` over all records, each computed artifact counted once.

    Records of figures that read another figure's cached stages repeat its timings; a cached
    artifact returns its recorded seconds bit for bit, so equal values of one stage are one run.
    """
    found: dict[str, set] = {stage: set() for stage in _STAGE_KEYS.values()}

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _STAGE_KEYS and number(value):
                    found[_STAGE_KEYS[key]].add(float(value))
                elif key in _STAGE_KEYS and isinstance(value, dict):
                    found[_STAGE_KEYS[key]].update(float(v) for v in value.values() if number(v))
                elif key == "seconds" and number(value) and "steps" in node:
                    # A recovery run records its steps and seconds (figures 7 and 14).
                    found[_STAGE_KEYS["recovery_seconds"]].add(float(value))
                else:
                    if key == "estimator" and isinstance(value, dict) and number(value.get("seconds")):
                        found[_STAGE_KEYS["training_seconds"]].add(float(value["seconds"]))
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for record in records.values():
        walk(record.get("results", {}))
    return {stage: sorted(values) for stage, values in found.items() if values}


# ---------------------------------------------------------------------------------- rendering
def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) >= 1000:
        text = f"{int(value):,}"
    elif value == 0:
        text = "0"
    elif abs(value) < 1e-3 or abs(value) >= 1e5:
        text = f"{value:.3g}"
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}".strip() if unit and unit not in ("rad", "rad^2") else text


def _tolerance_text(tolerance: dict, unit: str) -> str:
    ((kind, value),) = tolerance.items()
    if kind == "none":
        return "none"
    if kind == "exact":
        return "exact"
    if kind == "below":
        return f"≤ {value:g}"
    if kind == "rel":
        return f"± {100 * value:g} %"
    return f"± {value:g}" + (f" {unit}" if unit and unit not in ("rad", "rad^2") else "")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def comparison_table(rows: list[Comparison]) -> str:
    lines = ["| quantity | paper | ours | tolerance | verdict |", "|---|---|---|---|---|"]
    for c in rows:
        unit = f" ({c.unit})" if c.unit and c.unit not in ("Å", "dB") else ""
        verdict_text = f"**{c.verdict}**" if c.verdict == "not reproduced" else c.verdict
        if c.verdict in ("not measured", "not comparable") and c.detail:
            verdict_text += f": {c.detail}"
        lines.append(
            f"| {_cell(c.quantity + unit)} | {_number(c.paper, c.unit)} | {_number(c.ours, c.unit)} | "
            f"{_tolerance_text(c.tolerance, c.unit)} | {_cell(verdict_text)} |"
        )
    notes = list(dict.fromkeys(c.note for c in rows if c.note))
    sources = list(dict.fromkeys(c.source for c in rows))
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {_cell(n)}" for n in notes) + "\n"
    text += "\nPaper values: " + "; ".join(_cell(s) for s in sources) + ".\n"
    return text


def headline_table(comparisons: list[Comparison], ids: list[str]) -> str:
    """The numbers the README shows: one row per headline id (sweeps: every point)."""
    by_id = {}
    for c in comparisons:
        by_id.setdefault(c.id.split("@")[0], []).append(c)
        if "@" in c.id:
            by_id.setdefault(c.id, []).append(c)
    lines = ["| figure | quantity | paper | ours | verdict |", "|---|---|---|---|---|"]
    for id_ in ids:
        for c in by_id.get(id_, []):
            lines.append(
                f"| {c.target} | {_cell(c.quantity)} | {_number(c.paper, c.unit)} | "
                f"{_number(c.ours, c.unit)} | {c.verdict} |"
            )
    return "\n".join(lines) + "\n"


def _figure_section(
    target: str, record: dict | None, rows: list[Comparison], fig_dir: Path, experiments_dir, notebooks_dir
) -> str:
    title = notebook_title(target, experiments_dir)
    parts = [f"## {title}\n", f'<a id="{target}"></a>\n']
    if record is None:
        parts.append(f"**Not built**: `figures/<profile>/{target}.json` is missing; run `make {target}`.\n")
    else:
        for name in record.get("outputs", []):
            path = fig_dir / name
            if name.endswith(".png"):
                parts.append(f"![{target}]({name})\n")
            elif name.endswith(".md") and path.is_file():
                # Its headings go under the section's own.
                parts.append(re.sub(r"(?m)^#", "###", path.read_text().strip()) + "\n")
            else:
                parts.append(f"Data: [`{name}`]({name})\n")
        params = record.get("parameters", {})
        prov = record.get("provenance", {})
        seed = params.get(
            "seed", params.get("pipeline", {}).get("seed") if isinstance(params.get("pipeline"), dict) else None
        )
        seconds = notebook_seconds(notebooks_dir, target)
        facts = [f"record [`{target}.json`]({target}.json) (parameters, results, provenance)"]
        if seed is not None:
            facts.append(f"seed {seed}")
        if prov.get("git_commit"):
            facts.append(f"commit `{prov['git_commit'][:10]}`")
        if seconds is not None:
            facts.append(f"last build {seconds:.0f} s")
        parts.append("Built by `make " + target + "`: " + ", ".join(facts) + ".\n")
    if rows:
        parts.append(comparison_table(rows))
    elif record is not None:
        parts.append("The paper reports no number for this figure: compare it with the paper's by eye.\n")
    return "\n".join(parts)


def render_markdown(
    profile: str,
    fig_dir,
    reference: dict,
    records: dict,
    comparisons: list[Comparison],
    *,
    targets: list[str],
    experiments_dir="experiments",
    notebooks_dir=None,
) -> str:
    """The whole report as Markdown."""
    fig_dir = Path(fig_dir)
    notebooks_dir = Path(notebooks_dir or Path("build") / profile / "notebooks")
    counts = Counter(c.verdict for c in comparisons)
    commits = sorted({r.get("provenance", {}).get("git_commit", "")[:10] for r in records.values()} - {""})
    out = [
        f"# Replication report: profile `{profile}`\n",
        "Banjac, Donati & Defferrard (2021), *Learning to recover orientations from projections in "
        "single-particle cryo-EM*, arXiv:2104.06237, rebuilt by `make reproduce PROFILE=" + profile + "`. "
        "Every number under *ours* is read from the JSON record that the figure's notebook wrote beside "
        "it; every number under *paper* comes from `experiments/paper-reference.toml`, the only file that "
        "holds the paper's values. Verdicts compare them with the tolerance of the quantity's kind "
        "(stated in that file).\n",
        f"Generated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"records of commit(s) {', '.join(f'`{c}`' for c in commits) or 'unknown'}.\n",
    ]
    if profile == "tiny":
        out.append(
            "> The `tiny` profile is a smoke test (dozens of projections, a few epochs): its numbers are "
            "not expected to match the paper, and its verdicts say only that the comparison runs.\n"
        )
    out.append("## Summary\n")
    out.append("| verdict | values |\n|---|---|\n" + "".join(f"| {v} | {counts.get(v, 0)} |\n" for v in VERDICTS))
    out.append(
        "| target | reproduced | better | not reproduced | not comparable | not measured | shown |\n"
        "|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| [{t}](#{t}) | "
            + " | ".join(str(sum(1 for c in comparisons if c.target == t and c.verdict == v)) for v in VERDICTS)
            + " |\n"
            for t in targets
            if any(c.target == t for c in comparisons)
        )
    )
    if reference.get("headline"):
        out.append("### Headline numbers\n")
        out.append(headline_table(comparisons, reference["headline"]))
    # Targets the reference names but the profile does not build still get a ("not built") section.
    for target in targets + sorted({c.target for c in comparisons} - set(targets)):
        out.append(
            _figure_section(
                target,
                records.get(target),
                [c for c in comparisons if c.target == target],
                fig_dir,
                experiments_dir,
                notebooks_dir,
            )
        )
    out.append("## Where the authors' text and code disagree\n")
    out.append(
        "| topic | the paper's text | the authors' code | what we followed |\n|---|---|---|---|\n"
        + "".join(
            f"| {_cell(d['topic'])} | {_cell(d['text'])} | {_cell(d['code'])} | {_cell(d['followed'])} |\n"
            for d in reference.get("disagreement", [])
        )
    )
    out.append(stage_times_section(records, targets, notebooks_dir))
    return "\n".join(out)


def stage_times_section(records: dict, targets: list[str], notebooks_dir) -> str:
    lines = [
        "## Stage run times\n",
        "Wall time of each target's last notebook run (a run that found its stages cached is short), "
        "and the compute time each stage recorded when its artifact was first made.\n",
        "| target | last notebook run (s) |",
        "|---|---|",
    ]
    total = 0.0
    for target in targets:
        seconds = notebook_seconds(notebooks_dir, target)
        total += seconds or 0.0
        lines.append(f"| {target} | {'—' if seconds is None else f'{seconds:.1f}'} |")
    lines.append(f"| **all** | **{total:.0f}** |\n")
    stages = recorded_stage_seconds(records)
    if stages:
        lines += ["| stage | runs | total (min) | median per run (s) | longest (s) |", "|---|---|---|---|---|"]
        for stage, values in stages.items():
            median = sorted(values)[len(values) // 2]
            lines.append(f"| {stage} | {len(values)} | {sum(values) / 60:.1f} | {median:.1f} | {max(values):.1f} |")
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #bbb;padding:.25em .5em;vertical-align:top}
th{background:#eee}img{max-width:100%}blockquote{color:#555;border-left:4px solid #ccc;margin-left:0;padding-left:1em}
code{background:#f4f4f4;padding:0 .2em}"""


def render_html(markdown_text: str, title: str) -> str:
    """The Markdown report as a standalone HTML page (images stay beside it)."""
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown_text)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n"
    )


# ---------------------------------------------------------------------------------- entry points
def write_report(
    profile: str,
    *,
    fig_dir=None,
    reference_path=REFERENCE_FILE,
    targets=None,
    experiments_dir="experiments",
    notebooks_dir=None,
) -> list[Path]:
    """Write ``REPORT.md`` and ``REPORT.html`` into ``figures/<profile>/``; return their paths.

    ``targets`` (default: every record found) sets the sections and their order; a target
    without a record gets a "not built" section.
    """
    fig_dir = Path(fig_dir or Path("figures") / profile)
    if not fig_dir.is_dir():
        raise ReportError(f"{fig_dir} does not exist; run `make reproduce PROFILE={profile}` first")
    reference = load_reference(reference_path)
    records = load_records(fig_dir)
    targets = target_order(targets if targets is not None else records)
    comparisons = compare(reference, records)
    text = render_markdown(
        profile,
        fig_dir,
        reference,
        records,
        comparisons,
        targets=targets,
        experiments_dir=experiments_dir,
        notebooks_dir=notebooks_dir,
    )
    md = artifacts.save_text(text, fig_dir / REPORT_NAME)
    page = artifacts.save_text(render_html(text, f"Replication report ({profile})"), fig_dir / HTML_NAME)
    return [md, page]


def headline_for(profile: str, *, fig_dir=None, reference_path=REFERENCE_FILE) -> str:
    """The headline table of a profile's records (what README.md shows for the cpu profile)."""
    reference = load_reference(reference_path)
    records = load_records(fig_dir or Path("figures") / profile)
    return headline_table(compare(reference, records), reference.get("headline", []))


def update_readme(readme, table: str) -> bool:
    """Replace the text between the headline markers of ``readme``; True if it changed."""
    readme = Path(readme)
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ReportError(f"{readme} has no headline markers; add the lines\n{README_BEGIN}\n{README_END}")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_BEGIN}\n{table}{README_END}{tail}"
    if new == text:
        return False
    artifacts.save_text(new, readme)
    return True


def readme_headline(readme) -> str:
    """The headline table currently in ``readme`` (between the markers)."""
    text = Path(readme).read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ReportError(f"{readme} has no headline markers")
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].lstrip("\n")


def check_report(fig_dir, targets) -> list[str]:
    """Problems with a written report: a target without its section, figure or record; a broken link."""
    fig_dir = Path(fig_dir)
    problems = []
    for name in (REPORT_NAME, HTML_NAME):
        if not (fig_dir / name).is_file():
            problems.append(f"{fig_dir / name} is missing (make reproduce writes it)")
    if problems:
        return problems
    text = (fig_dir / REPORT_NAME).read_text()
    for target in targets:
        if f'<a id="{target}"></a>' not in text:
            problems.append(f"{REPORT_NAME} has no section for {target}")
        elif f"**Not built**: `figures/<profile>/{target}.json`" in text:
            problems.append(f"{REPORT_NAME}: {target} is not built")
        elif target.startswith("figure-") and f"]({target}.png)" not in text:
            problems.append(f"{REPORT_NAME}: the section of {target} shows no {target}.png")
    for link in re.findall(r"\]\(([^)#:]+)\)", text):
        if not (fig_dir / link).is_file():
            problems.append(f"{REPORT_NAME} links {link}, which does not exist")
    return problems
