"""Renders a sustainability report (the collector's ``GET /v1/report`` JSON) as CSV or PDF.

CSV and PDF print every figure with the same format (``FIELDS``), so the PDF's text holds exactly
the CSV's numbers. The PDF is made with reportlab: a title page with the totals and the methods,
a table per group, a chart of daily energy and emissions, and the factor and PUE sources.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: (JSON key, column / row label, format) of every figure, in report order.
FIELDS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("jobs", "jobs", lambda v: f"{int(v)}"),
    ("gpu_hours", "GPU-hours", lambda v: f"{v:.2f}"),
    ("it_energy_kwh", "IT energy (kWh)", lambda v: f"{v:.3f}"),
    ("facility_energy_kwh", "facility energy (kWh)", lambda v: f"{v:.3f}"),
    ("location_based_co2e_kg", "Scope 2 location-based (kg CO2e)", lambda v: f"{v:.3f}"),
    ("market_based_co2e_kg", "Scope 2 market-based (kg CO2e)", lambda v: f"{v:.3f}"),
    ("embodied_co2e_kg", "embodied (kg CO2e)", lambda v: f"{v:.3f}"),
    ("sci_g_per_unit", "SCI (g CO2e per unit)", lambda v: f"{v:.2f}"),
    ("estimated_share", "estimated intensity share (%)", lambda v: f"{v * 100:.1f}"),
    ("idle_energy_kwh", "idle energy (kWh)", lambda v: f"{v:.3f}"),
    ("mean_util_pct", "mean GPU utilisation (%)", lambda v: f"{v:.1f}"),
    ("mean_pue", "mean PUE", lambda v: f"{v:.3f}"),
]
CSV_KEYS = [key if key != "estimated_share" else "estimated_share_pct" for key, _l, _f in FIELDS]


def _group_name(value: str) -> str:
    return value or "(none)"


def provenance_lines(body: dict[str, Any]) -> list[str]:
    """The report's statements: period, time zone, methods, factor and PUE sources."""
    lines = [
        f"period: {body['since']} to {body['until']} (UTC); days in time zone {body['time_zone']}",
        f"location-based: {body['labels']['location_based']}",
        f"market-based: {body['labels']['market_based']}",
        f"SCI: {body['labels']['sci']}",
        f"embodied: {body['embodied']['g_per_gpu_hour']:g} g CO2e per GPU-hour "
        f"({body['embodied']['source']})",
    ]
    for z in body["zones"]:
        lines.append(f"zone {z['zone'] or '(none)'}: location-based factor {z['location_factor_source']}, "
                     f"emission factor type {z['emission_factor']}; market-based factors: "
                     + "; ".join(z["market_factor_sources"]))
    for r in body["racks"]:
        lines.append(f"rack {r['rack']} (zone {r['zone']}): PUE {r['pue_source']}")
    return lines


def to_csv(body: dict[str, Any]) -> str:
    """Comment lines (``#``) with the statements, then one row per group and a TOTAL row."""
    out = io.StringIO()
    out.write(f"# {body['title']}\n")
    for line in provenance_lines(body):
        out.write(f"# {line}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([body["by"], *CSV_KEYS])
    for g in body["groups"]:
        writer.writerow([_group_name(g[body["by"]]), *(fmt(g[key]) for key, _l, fmt in FIELDS)])
    writer.writerow(["TOTAL", *(fmt(body["totals"][key]) for key, _l, fmt in FIELDS)])
    return out.getvalue()


def to_pdf(body: dict[str, Any], path: Path) -> None:
    """Write the PDF report to ``path``."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.charts.legends import Legend
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
    from reportlab.platypus.flowables import KeepTogether

    styles = getSampleStyleSheet()
    grid = TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef4")),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
        ("FONTSIZE", (0, 0), (-1, -1), 9),
    ])

    def figures_table(figs: dict[str, Any]) -> Table:
        unit = body.get("sci_unit", "unit")
        rows = [["figure", "value"]] + [[label.replace("unit", unit), fmt(figs[key])]
                                        for key, label, fmt in FIELDS]
        table = Table(rows, colWidths=[9 * cm, 5 * cm])
        table.setStyle(grid)
        return table

    story: list[Any] = [
        Paragraph(body["title"], styles["Title"]),
        Paragraph(f"{body['since']} to {body['until']} (UTC), grouped by {body['by']}", styles["Heading2"]),
        Paragraph(f"Time zone of the days: {body['time_zone']}. Generated {body['generated_at']}.",
                  styles["Normal"]),
        Spacer(1, 0.5 * cm),
        Paragraph("Totals", styles["Heading2"]),
        figures_table(body["totals"]),
        Spacer(1, 0.5 * cm),
        Paragraph("Methods and sources", styles["Heading2"]),
    ]
    story += [Paragraph(_escape(line), styles["Normal"]) for line in provenance_lines(body)]
    story.append(PageBreak())
    story.append(Paragraph(f"Per {body['by']}", styles["Heading1"]))
    for g in body["groups"]:
        story.append(KeepTogether([Paragraph(f"{body['by']} {_escape(_group_name(g[body['by']]))}",
                                             styles["Heading3"]), figures_table(g), Spacer(1, 0.3 * cm)]))
    story.append(PageBreak())
    story.append(Paragraph(f"Daily energy and emissions ({body['time_zone']})", styles["Heading1"]))
    daily = body["daily"]
    if daily:
        drawing = Drawing(16 * cm, 9 * cm)
        chart = VerticalBarChart()
        chart.x, chart.y, chart.width, chart.height = 40, 50, 16 * cm - 60, 9 * cm - 80
        chart.data = [
            [d["facility_energy_kwh"] for d in daily],
            [d["location_based_co2e_kg"] for d in daily],
            [d["market_based_co2e_kg"] for d in daily],
        ]
        chart.categoryAxis.categoryNames = [d["date"][5:] for d in daily]
        chart.categoryAxis.labels.angle = 45 if len(daily) > 7 else 0
        chart.categoryAxis.labels.fontSize = 6 if len(daily) > 14 else 8
        chart.valueAxis.valueMin = 0
        for i, colour in enumerate(("#4e79a7", "#e15759", "#59a14f")):
            chart.bars[i].fillColor = colors.HexColor(colour)
        legend = Legend()
        legend.x, legend.y = 50, 9 * cm - 12
        legend.columnMaximum = 1
        legend.alignment = "right"
        legend.colorNamePairs = [(colors.HexColor("#4e79a7"), "facility energy (kWh)"),
                                 (colors.HexColor("#e15759"), "location-based (kg CO2e)"),
                                 (colors.HexColor("#59a14f"), "market-based (kg CO2e)")]
        drawing.add(chart)
        drawing.add(legend)
        drawing.add(String(0, 0, "", fontSize=1))
        story.append(drawing)
        rows = [["date", "facility kWh", "location-based kg", "market-based kg"]] + [
            [d["date"], f"{d['facility_energy_kwh']:.3f}", f"{d['location_based_co2e_kg']:.3f}",
             f"{d['market_based_co2e_kg']:.3f}"] for d in daily
        ]
        table = Table(rows, repeatRows=1)
        table.setStyle(grid)
        story.append(table)
    else:
        story.append(Paragraph("No energy in this period.", styles["Normal"]))
    doc = SimpleDocTemplate(str(path), pagesize=A4, title=body["title"], author="gridwatt",
                            leftMargin=2 * cm, rightMargin=2 * cm)
    doc.build(story)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
