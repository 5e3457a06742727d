"""The HTML report: numbers computed from the data, self-contained page, atomic writes, bad input."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from minority_core.report import ArmResult, Report, build_report, format_number, write_report

N = 120


def make_arm(name: str, shift: float, seed: int, rgb: bool = False, out_of_support: float = 0.1, n: int = N) -> ArmResult:
    """Random scores (shifted up by `shift` for the 'rarer' arm), random 8×8 images aligned with them."""
    rng = np.random.default_rng(seed)
    rarity = rng.gamma(2.0, 1.0, n) + shift
    in_support = rng.random(n) >= out_of_support
    rarity[~in_support] = np.nan
    shape = (n, 8, 8, 3) if rgb else (n, 8, 8)
    return ArmResult(
        name=name,
        scores={
            "avgknn": rng.normal(2.0 + shift, 0.3, n),
            "lof": rng.normal(1.1 + shift / 4, 0.1, n),
            "rarity": rarity,
            "in_support": in_support,
        },
        summary={"samples": n, "rare_share": 0.07 + shift / 10, "precision": 0.8, "recall": 0.55, "fid": None},
        images=rng.integers(0, 256, shape, dtype=np.uint8),
        sample_ids=[f"{name}-{i:05d}" for i in range(n)],
    )


@pytest.fixture(scope="module")
def arms() -> list[ArmResult]:
    return [make_arm("standard", 0.0, seed=1), make_arm("guided", 1.1, seed=2, rgb=True)]


@pytest.fixture(scope="module")
def report(arms) -> Report:
    return build_report(arms, "Digits: standard vs guided", notes=["labels are the demo classifier's predictions"])


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_table_holds_values_computed_from_the_data(report, arms):
    for arm in arms:
        scores = arm.scores
        assert f'{arm.name}</td>' in report.html
        supported = scores["in_support"] & np.isfinite(scores["rarity"])
        expected = [
            np.mean(scores["avgknn"]), np.median(scores["avgknn"]),
            np.mean(scores["lof"]), np.median(scores["lof"]),
            np.mean(scores["rarity"][supported]),
        ]
        for value in expected:
            assert f">{format_number(value)}<" in report.html
            assert f"{value:.3f}" == format_number(value)  # everyday magnitudes read as 3 decimals
        assert f">{100 * (1 - supported.mean()):.1f} %<" in report.html
        assert f">{100 * arm.summary['rare_share']:.1f} %<" in report.html
    assert ">0.800<" in report.html and ">0.550<" in report.html
    assert "FID" not in report.html  # a column missing for every arm is left out


def test_table_rows_are_plain_numbers(report, arms):
    assert [row["name"] for row in report.table] == ["standard", "guided"]
    row = report.table[1]
    assert row["avgknn_mean"] == pytest.approx(np.mean(arms[1].scores["avgknn"]))
    assert row["samples"] == N and row["fid"] is None
    assert all(isinstance(v, (str, int, float, type(None))) for r in report.table for v in r.values())


def test_at_a_glance_percentage(report, arms):
    base, guided = (np.mean(a.scores["avgknn"]) for a in arms)
    pct = 100 * (guided - base) / base
    assert abs(pct) >= 10
    line = re.search(r'class="glance">.*?</section>', report.html).group(0)
    assert f"guided vs standard: AvgkNN {pct:+.0f} % (rarer)" in line
    assert "rare-class share 7 % → 18 %" in line
    assert report.html.index('class="glance"') < report.html.index("<table")


def test_pngs_are_valid_and_embedded(report):
    expected = {"hist-avgknn.png", "hist-lof.png", "hist-rarity.png", "grid-00-standard-rarest.png",
                "grid-00-standard-least-rare.png", "grid-01-guided-rarest.png", "grid-01-guided-least-rare.png"}
    assert set(report.pngs) == expected
    for name, data in report.pngs.items():
        image = Image.open(io.BytesIO(data))
        image.verify()
        width, height = Image.open(io.BytesIO(data)).size
        assert 200 <= width <= 3000 and 200 <= height <= 3000, (name, width, height)
    grid = Image.open(io.BytesIO(report.pngs["grid-00-standard-rarest.png"]))
    assert grid.mode == "L" and grid.size[0] >= 4 * 64  # 8×8 digits upscaled to ≥ 64 px tiles
    assert Image.open(io.BytesIO(report.pngs["grid-01-guided-rarest.png"])).mode == "RGB"
    assert sorted(embedded_pngs(report.html)) == sorted(report.pngs.values())


def test_grid_shows_the_rarest_samples_nearest_upscaled():
    arm = make_arm("one", 0.0, seed=3, n=40)
    arm.images = np.zeros((40, 8, 8), dtype=np.uint8)
    top = np.argsort(arm.scores["avgknn"])[::-1][:16]
    arm.images[top] = 255  # the 16 rarest are white, everything else black
    png = build_report([arm], "t").pngs["grid-00-one-rarest.png"]
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    assert set(np.unique(pixels)) <= {200, 255}  # white tiles + grey gutters only, no interpolated values
    assert (pixels == 255).sum() == 16 * 64 * 64


def test_page_is_self_contained(report):
    assert "http://" not in report.html and "https://" not in report.html
    assert "<script" not in report.html and "<link" not in report.html
    assert report.html.count('<img src="data:image/png;base64,') == 3  # the histograms
    assert report.html.count('<img class="grid" src="data:image/png;base64,') == 4
    assert "labels are the demo classifier&#x27;s predictions" in report.html


def test_markdown_has_one_row_per_arm(report):
    lines = report.markdown.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 3  # header + 2 arms
    assert table[1].startswith("| standard |") and table[2].startswith("| guided |")
    assert sum(1 for line in lines if line.startswith("|---")) == 1
    assert "report/index.html" in lines[-1]


def test_all_out_of_support_arm():
    arm = make_arm("lost", 0.5, seed=4, out_of_support=1.0)
    arm.scores["rarity"][:] = np.nan
    report = build_report([make_arm("standard", 0.0, seed=5), arm], "t")
    assert ">100.0 %<" in report.html
    assert re.search(r"lost vs standard: .*out of support \d+ % → 100 %", report.html)
    assert "lost: 120 of 120" in report.html
    assert report.table[1]["rarity_mean_in_support"] is None
    assert report.table[1]["out_of_support_share"] == 1.0
    alone = build_report([arm], "t")  # no finite rarity anywhere: still a plot, no crash
    assert "hist-rarity.png" in alone.pngs


def test_arm_names_and_notes_are_escaped():
    evil = "<script>alert(1)</script>"
    arms = [make_arm("standard", 0.0, seed=6), make_arm(evil, 0.5, seed=7)]
    report = build_report(arms, f"title {evil}", notes=[evil], metric_descriptions={"lof": evil})
    assert "<script" not in report.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report.html
    assert "<script" not in report.markdown
    assert all(re.fullmatch(r"[a-z0-9.-]+", name) for name in report.pngs)


def test_write_report_local(report, tmp_path):
    fs = fsspec.filesystem("file")
    path = write_report(report, fs, str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "report" / "index.html")
    folder = tmp_path / "run" / "report"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*report.pngs, "index.html"])
    assert (folder / "index.html").read_text(encoding="utf-8") == report.html
    assert (folder / "hist-lof.png").read_bytes() == report.pngs["hist-lof.png"]
    assert str(folder / "index.html") in report.markdown.splitlines()[-1]


def test_write_report_memory(report):
    fs = fsspec.filesystem("memory")
    root = "memory://report-test-run"
    try:
        path = write_report(report, fs, root)
        assert path == f"{root}/report/index.html"
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(root))
        assert names == sorted([*report.pngs, "index.html"])
        assert fs.cat_file(path).decode("utf-8") == report.html
    finally:
        fs.rm(root, recursive=True)


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ([], "non-empty"),
        ([make_arm("a", 0, 1, n=5), make_arm("a", 0, 2, n=5)], "unique"),
        ([ArmResult("a", {"avgknn": np.zeros(3), "lof": np.zeros(4)}, {})], "differ in length"),
        ([ArmResult("a", {"avgknn": np.zeros(3)}, {}, images=np.zeros((2, 8, 8), np.uint8))], "aligned"),
        ([ArmResult("a", {"avgknn": np.zeros(3)}, {}, images=np.zeros((3, 8, 8), np.float32))], "uint8"),
        ([ArmResult("a", {"avgknn": np.zeros(3)}, {}, sample_ids=["x"])], "sample_ids"),
        ([ArmResult("", {}, {})], "non-empty strings"),
        (["not an arm"], "ArmResult"),
    ],
)
def test_invalid_input_raises_one_line(arms, message):
    with pytest.raises(ValueError, match=message) as err:
        build_report(arms, "t")
    assert "\n" not in str(err.value)


def test_does_not_import_prefect_or_ray():
    package = Path(sys.modules["minority_core.report"].__file__).parent
    modules = sorted(package.glob("*.py"))
    assert package / "plots.py" in modules  # the module that draws with matplotlib is among those checked
    for module in modules:
        source = module.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(prefect|ray)\b", source, re.M), module.name
        assert "matplotlib.pyplot" not in source, module.name


# --------------------------------------------------------------------------- per prompt


def with_prompts(arm: ArmResult, prompts: list[str]) -> ArmResult:
    return ArmResult(arm.name, arm.scores, arm.summary, arm.images, arm.sample_ids, prompts=prompts)


def test_by_prompt_rows_match_a_brute_force_groupby():
    base = make_arm("guided", 0.5, seed=3)
    n = len(base.scores["avgknn"])
    names = ["a <b>cat</b>", "red dog", "a dog"]
    rng = np.random.default_rng(0)
    prompts = [names[k] for k in rng.integers(0, 3, n)]
    built = build_report([with_prompts(base, prompts)], "t")
    rows = {r["prompt"]: r for r in built.by_prompt["guided"]}
    avgknn, lof = base.scores["avgknn"], base.scores["lof"]
    supported = base.scores["in_support"] & np.isfinite(base.scores["rarity"])
    threshold = np.sort(avgknn)[::-1][round(0.1 * n) - 1]  # all finite: the arm's rarest 10 % is avgknn >= this
    for name in names:
        mask = np.array(prompts) == name
        row = rows[name]
        assert row["samples"] == mask.sum()
        assert row["avgknn_mean"] == pytest.approx(avgknn[mask].mean())
        assert row["lof_median"] == pytest.approx(np.median(lof[mask]))
        assert row["out_of_support_share"] == pytest.approx((~supported[mask]).mean())
        assert row["rarest_share"] == pytest.approx((avgknn[mask] >= threshold).mean())
    means = [r["avgknn_mean"] for r in built.by_prompt["guided"]]
    assert means == sorted(means, reverse=True)  # rarest prompt first
    assert "By prompt" in built.html and "a &lt;b&gt;cat&lt;/b&gt;" in built.html and "<b>cat</b>" not in built.html


def test_by_prompt_only_for_arms_with_prompts_and_lengths_checked():
    plain, guided = make_arm("standard", 0.0, seed=1), make_arm("guided", 0.5, seed=2)
    n = len(guided.scores["avgknn"])
    built = build_report([plain, with_prompts(guided, ["p"] * n)], "t")
    assert list(built.by_prompt) == ["guided"] and built.by_prompt["guided"][0]["samples"] == n
    assert "By prompt" not in build_report([plain], "t").html
    with pytest.raises(ValueError, match="2 prompts but"):
        build_report([with_prompts(guided, ["p", "q"])], "t")


# --------------------------------------------------------------------------- only the shown images


def test_an_arm_with_only_its_shown_images_builds_the_same_report():
    from minority_core.report import shown_rows

    full = make_arm("guided", 0.5, seed=8, n=300)
    rows = shown_rows(full.scores["avgknn"])
    assert len(rows) <= 32 and rows == sorted(set(rows))
    shown = ArmResult(full.name, full.scores, full.summary, full.images[rows], full.sample_ids, image_rows=rows)
    expected, built = build_report([full], "t"), build_report([shown], "t")
    assert built.html == expected.html and built.pngs == expected.pngs


@pytest.mark.parametrize(
    ("image_rows", "count", "message"),
    [
        ([0, 0], 2, "distinct"),
        ([0, 99], 2, r"distinct rows in \[0, 40\)"),
        (["a"], 1, "score row numbers"),
        ([0, 1, 2], 2, "2 images but 3 image_rows"),
        ([0, 1], 2, "no image for score rows"),  # the grids show rows that were not given
    ],
)
def test_invalid_image_rows_raise_one_line(image_rows, count, message):
    arm = make_arm("a", 0.0, seed=9, n=40)
    with pytest.raises(ValueError, match=message) as err:
        build_report([ArmResult("a", arm.scores, {}, arm.images[:count], image_rows=image_rows)], "t")
    assert "\n" not in str(err.value)
