"""report.html's HTML, as a person reads it on a phone or a desktop: one self-contained file (figures embedded, a few
lines of inline script to sort the trial table), with what was run, the ranked trials (the chosen one marked, values
written as the catalogue writes them), links to the rest of the experiment, and the report's sections. The sections
and their figures come from quickdraw.report_sections; this module only lays them out."""

from __future__ import annotations

import base64
import math
import struct
from html import escape

from quickdraw.catalogue import BEST_VAL_ACCURACY, EPOCH, HYPERPARAMETER, TEST_ACCURACY
from quickdraw.search_record import SearchRecord
from quickdraw.summary import (CHOICE, EPOCHS, MEASURES, STATUSES, TIE_BREAK, Summary, best_per_model, best_sentence,
                               best_trial, comparison, diverged_sentence, members_sentence, same_for_every_trial,
                               tie_sentence)

MIN_SCALE = 0.7  # a figure is never shown narrower than this share of its pixels: a phone scrolls it sideways
STYLE = """
body{font-family:system-ui,sans-serif;line-height:1.45;max-width:75rem;margin:1.5rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem;overflow-wrap:anywhere} h2{font-size:1.25rem;margin-top:2rem}
code{background:#f3f3f3;padding:.1em .3em;overflow-wrap:anywhere}
.scroll{overflow-x:auto} figure{margin:1rem 0;overflow-x:auto} figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:.9rem;color:#555}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap} th{white-space:normal}
td.text,th.text{text-align:left}
th button{font:inherit;font-weight:bold;background:none;border:0;padding:0;cursor:pointer;color:inherit}
th[aria-sort=ascending] button::after{content:" \\25B2"} th[aria-sort=descending] button::after{content:" \\25BC"}
tr.chosen{background:#fff3c4;font-weight:bold} .badge{background:#b58900;color:#fff;border-radius:.3em;
padding:0 .4em;margin-left:.4em;font-size:.8em}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em} dl.run dt{font-weight:bold}
dl.run dd{margin:0;overflow-wrap:anywhere} .skipped{color:#a33}
@media (max-width:40rem){dl.run{grid-template-columns:1fr} dl.run dd{margin-bottom:.4em}}
"""
# Click a header to sort by it, again to reverse; empty cells stay last. Numbers sort as numbers (data-value).
SCRIPT = """
document.querySelectorAll("table.sortable th button").forEach((button) => button.addEventListener("click", () => {
  const header = button.parentElement, table = header.closest("table"), column = header.cellIndex;
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach((th) => th.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const value = (row) => row.cells[column].dataset.value;
  const compare = (a, b) => {
    if (a === "" || b === "") return (a === "") - (b === "");
    const order = isNaN(a) || isNaN(b) ? a.localeCompare(b) : a - b;
    return ascending ? order : -order;
  };
  const body = table.tBodies[0];
  body.append(...[...body.rows].sort((a, b) => compare(value(a), value(b))));
}));
"""
STATUS_MEANING = "; ".join(f"{status}: {meaning}" for status, meaning in STATUSES.items())
RANK_MEANING = "by validation accuracy, then validation loss, then the trial that started first"
LINKS = {"summary.csv": "the table as CSV", "summary.json": "the table and what mattered as JSON",
         "summary.md": "the summary as Markdown", "best_model/config.json": "the chosen model (best_model/)"}


def render(title: str, summary: Summary, sections, record: SearchRecord | None, location: str,
           ran: dict[str, int]) -> str:
    """The whole page. `sections` are quickdraw.report_sections'; `record` is search.json's (None when unreadable),
    `location` the experiment's path or URI, for the TensorBoard command, and `ran` how many trials ran in which
    precision on which device (quickdraw.experiment.what_ran)."""
    body = [f"<h1>Experiment {escape(title)}</h1>", f"<p>{escape(overview(summary))}</p>",
            "<h2>What was run</h2>", run_settings(record, location, ran),
            "<h2>Every trial, ranked by validation accuracy</h2>", ranked_table(summary), table_notes(summary),
            *chosen_model(summary)]
    for section in sections:
        body.append(f"<h2>{escape(section.heading)}</h2>")
        if section.figures:
            body.append(f"<p>{escape(section.text)}</p>")
        body += [picture(name, image.png, image.alt) for name, image in section.figures.items()]
        body += [f'<p class="skipped">Not shown: {escape(note)}.</p>' for note in section.skipped]
    head = (f'<head>\n<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}: report</title>\n<style>{STYLE}</style>\n</head>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n{head}\n<body>\n' + "\n".join(body)
            + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def overview(summary: Summary) -> str:
    trials, shown = summary.table, summary.shown
    text = f"{(trials.status == 'finished').sum()} of {len(trials)} trials finished."
    if stopped := (trials.status == "stopped").sum():
        text += f" {stopped} {'was' if stopped == 1 else 'were'} stopped early by ASHA."
    if diverged := diverged_sentence(trials, whole=False):
        text += f" {diverged}"
    if (index := best_trial(trials)) is not None:
        text += f" Best: {best_sentence(trials.loc[index], shown)}."
    if per_model := best_per_model(trials, shown):
        text += " Best of each model: " + "; ".join(per_model) + "."
    return text


def run_settings(record: SearchRecord | None, location: str, ran: dict[str, int]) -> str:
    """What was run, as a list of terms, then how to open its TensorBoard and links to the other files."""
    items = settings_items(record) if record else {"Settings": "search.json cannot be read"}
    items["Ran in"] = escape("; ".join(f"{how} ({count} trial{'s' if count != 1 else ''})" for how, count in ran.items())
                             or "no trial reported an epoch")
    items["TensorBoard"] = f"<code>tensorboard --logdir {escape(location)}</code>"
    items["Files"] = ", ".join(f'<a href="{escape(path)}">{escape(path)}</a> ({escape(what)})'
                               for path, what in LINKS.items())
    return '<dl class="run">' + "".join(f"<dt>{escape(term)}</dt><dd>{value}</dd>" for term, value in items.items()) \
        + "</dl>"


def settings_items(record: SearchRecord) -> dict[str, str]:
    """search.json's settings and run, as escaped HTML by term."""
    config, run, data = record.config, record.run, record.config.data
    split = data.split
    items = {
        "Classes": escape(f"{len(data.classes)}: {', '.join(data.classes)}"),
        "Split": escape(f"{split.train:,} training, {split.validation:,} validation, {split.test:,} test drawings "
                        f"(seed {data.seed})"),
        "Training": escape(f"{config.epochs} epochs, --precision {config.precision}"
                           + (", compiled" if config.compile else "")),
        "Search": escape(search_words(record)),
        "Each trial": escape(f"{record.resources.get('cpu', 0):g} CPU, {record.resources.get('gpu', 0):g} GPU"),
        "Command": f"<code>{escape(run['command'])}</code>",
        "Started": escape(run["started"]),
        "Code": escape(f"git commit {run['git_commit']}" if run["git_commit"] else "not a git checkout"),
        "Packages": escape(", ".join(f"{name} {version}" for name, version in run["packages"].items() if version)),
        "Hardware": escape(hardware_words(run["hardware"])),
    }
    return items


def search_words(record: SearchRecord) -> str:
    config = record.config
    words = "a grid" if config.search == "grid" else f"{config.search}, {config.num_samples} trials"
    if config.space_file:
        words += f" over the space in {config.space_file}"
    if config.max_concurrent_trials:
        words += f", at most {config.max_concurrent_trials} at once"
    if config.scheduler == "asha":
        words += (f"; ASHA stopping trials (grace period {config.grace_period}, reduction factor "
                  f"{config.reduction_factor:g})")
    return words


def hardware_words(hardware: dict) -> str:
    gpus = f"{hardware.get('gpus', 0):g} GPU"
    if hardware.get("gpu_kinds"):
        gpus += f" ({', '.join(hardware['gpu_kinds'])})"
    nodes = hardware.get("nodes", 1)
    return (f"{nodes} node{'s' if nodes != 1 else ''}, {hardware.get('cpus', 0):g} CPU, {gpus}; "
            f"driver on {hardware.get('driver', '?')}")


def ranked_table(summary: Summary) -> str:
    """Every trial, ranked, with the hyperparameters that tell trials apart; the chosen trial's row marked.
    Each cell keeps its number in data-value, so that the script sorts by it."""
    table, shown = summary.table, summary.shown
    # The accuracies next to the rank: on a phone they are what shows before the table scrolls.
    columns = ["rank", BEST_VAL_ACCURACY.key, TEST_ACCURACY.key, *shown, EPOCHS,
               *(m.key for m in MEASURES if m not in (BEST_VAL_ACCURACY, TEST_ACCURACY)), "status"]
    chosen = best_trial(table)
    header = "".join(header_cell(column) for column in columns)
    rows = []
    for index, row in table.iterrows():
        cells = "".join(cell(column, row[column], chosen=index == chosen) for column in columns)
        rows.append(f'<tr class="chosen">{cells}</tr>' if index == chosen else f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table class="summary sortable"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


MEASURE = {m.key: m for m in MEASURES} | {EPOCHS: EPOCH}


def header_cell(column: str) -> str:
    if column in MEASURE:
        words, meaning = MEASURE[column].label, MEASURE[column].meaning
    elif column in HYPERPARAMETER:
        words, meaning = HYPERPARAMETER[column].label, HYPERPARAMETER[column].meaning
    else:
        words, meaning = column.capitalize(), {"rank": RANK_MEANING, "status": STATUS_MEANING}[column]
    kind = "text" if column in ("model", "status") else "number"
    return f'<th class="{kind}" title="{escape(meaning)}"><button type="button">{escape(words)}</button></th>'


def cell(column: str, value, chosen: bool) -> str:
    if column == "rank":
        badge = ' <span class="badge">chosen</span>' if chosen else ""
        return f'<td data-value="{value}">{value}{badge}</td>'
    if isinstance(value, float) and math.isnan(value):
        return '<td data-value=""></td>'
    if column in HYPERPARAMETER:
        text = HYPERPARAMETER[column].text(value)
    else:
        text = MEASURE[column].form.format(value) if column in MEASURE else str(value)
    kind = ' class="text"' if column in ("model", "status") else ""
    return f'<td{kind} data-value="{escape(str(value))}">{escape(text)}</td>'


def chosen_model(summary: Summary) -> list[str]:
    """The best trial and the chosen model (best_model/) side by side, and its members."""
    if summary.chosen is None:
        return []
    table = comparison(summary).to_html(index=False, border=0, classes="chosen-model", escape=True)
    return ["<h2>The chosen model (best_model/)</h2>", f'<div class="scroll">{table}</div>',
            f"<p>{escape(members_sentence(summary))}</p>"]


def table_notes(summary: Summary) -> str:
    notes = [f"The chosen trial (highlighted) is {CHOICE} ({TIE_BREAK})."]
    if tie := tie_sentence(summary.table):
        notes.append(f"Here {tie}.")
    if same := same_for_every_trial(summary.table, summary.shown):
        notes.append(same)
    notes.append("Click a column's name to sort by it; hover over it for what it measures. Training time counts the "
                 "training passes only; Ray's own time_total_s also counts validation, testing, checkpoints and "
                 "start-up.")
    return f"<p>{escape(' '.join(notes))}</p>"


def picture(name: str, png: bytes, alt: str) -> str:
    """A figure at its own size on a wide screen, shrunk to the page on a narrower one but never below MIN_SCALE of
    its size (its box then scrolls sideways, not the page)."""
    width, height = png_size(png)
    source = base64.b64encode(png).decode()
    return (f'<figure><img src="data:image/png;base64,{source}" alt="{escape(alt)}" data-file="{escape(name)}" '
            f'width="{width}" height="{height}" style="min-width:{math.ceil(MIN_SCALE * width)}px">'
            f"<figcaption>{escape(alt)} (report/{escape(name)})</figcaption></figure>")


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    return struct.unpack(">II", png[16:24])
