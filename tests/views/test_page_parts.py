"""Pure parts of the web page: SVG charts, cells, zone sums, escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gridwatt.collector.web.pages import _job_link, num, zone_totals
from gridwatt.collector.web.svg import chart, nice_max

H = 3600 * 1_000_000_000


def test_nice_max() -> None:
    assert [nice_max(v) for v in (0.0, 0.7, 1.0, 1.2, 2.2, 3.0, 7.5, 12_000.0)] == \
        [1.0, 1.0, 1.0, 2.0, 2.5, 5.0, 10.0, 20_000.0]


def test_chart_is_valid_svg_with_every_value() -> None:
    svg = chart('<b>"x"</b>', "kg", [0, H, 2 * H], [1.5, 0.0, 4.25], H, kind="bar", chart_id="c1")
    root = ET.fromstring(svg)  # well-formed XML: titles are escaped
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = root.findall("s:rect", ns)
    assert [float(b.get("data-value", "")) for b in bars] == [1.5, 0.0, 4.25]
    # the top of the axis is 5: the 4.25 bar is 85 % of the plot's height
    heights = [float(b.get("height", "")) for b in bars]
    assert abs(heights[2] / 156.0 - 0.85) < 0.01 and heights[1] == 0.0
    line = ET.fromstring(chart("p", "W", [0, H], [2.0, 3.0], H))
    assert [float(c.get("data-value", "")) for c in line.findall("s:circle", ns)] == [2.0, 3.0]
    assert "no data" in chart("empty", "W", [], [], H)


def test_cells_and_links_escape() -> None:
    assert num(1234.5678, ".3f", "k") == '<td data-key="k" data-value="1234.5678">1234.568</td>'
    assert _job_link("a/<b>") == '<a href="/ui/jobs/a%2F%3Cb%3E">a/&lt;b&gt;</a>'


def test_zone_totals_hand_computed() -> None:
    racks = [
        {"zone": "DE", "it_energy_kwh": 10.0, "facility_energy_kwh": 12.0, "co2e_kg": 6.0, "gpu_hours": 4.0,
         "mean_util_pct": 50.0, "idle_energy_kwh": 1.0},
        {"zone": "DE", "it_energy_kwh": 20.0, "facility_energy_kwh": 30.0, "co2e_kg": 15.0, "gpu_hours": 12.0,
         "mean_util_pct": 90.0, "idle_energy_kwh": 0.5},
    ]
    (de,) = zone_totals(racks)
    assert de["it_energy_kwh"] == 30.0 and de["facility_energy_kwh"] == 42.0 and de["co2e_kg"] == 21.0
    assert de["mean_pue"] == 42.0 / 30.0 and de["mean_intensity_g_per_kwh"] == 500.0
    assert de["mean_util_pct"] == 80.0 and de["idle_energy_kwh"] == 1.5
