"""The HTML report: numbers computed from the data, self-contained page, atomic writes, bad input."""

from __future__ import annotations

import base64
import html
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
    histograms = sorted(png for name, png in report.pngs.items() if name.startswith("hist-"))
    tiles = embedded_pngs(report.html)
    assert sorted(set(tiles) & set(report.pngs.values())) == histograms  # the plots are inlined
    assert len(tiles) == len(histograms) + 4 * 16  # and every tile, one PNG each; the grid PNGs are linked
    for name in report.pngs:
        if name.startswith("grid-"):
            assert f'<a href="{name}">' in report.html


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
    assert report.html.count('<img class="tile px" width="64" height="64" src="data:image/png;base64,') == 4 * 16
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


# --------------------------------------------------------------------------- settings, warnings, tiles, scrolling


def written_config(tmp_path: Path, **options) -> dict:
    """The config a run's manifest records (SynthesisConfig.output_identity), written and read back."""
    from minority_core.config.synthesis import SynthesisConfig
    from minority_core.io import Manifest, ShardStore

    config = SynthesisConfig.from_options(model="bundled:digits", out=str(tmp_path), num_samples=120, **options)
    store = ShardStore(str(tmp_path))
    store.write_manifest(Manifest(config=config.output_identity(), code_version="test"))
    return store.read_manifest().config


def settings_cells(page: str) -> dict[str, list[str]]:
    """The settings table as label -> one cell text per arm."""
    table = re.search(r'<table class="wide settings">.*?</table>', page).group(0)
    rows = re.findall(r'<tr><td class="name">(.*?)</td>(.*?)</tr>', table)
    return {label: re.findall(r"<td[^>]*>(.*?)</td>", cells) for label, cells in rows}


def test_settings_come_from_the_manifest(tmp_path):
    standard = written_config(tmp_path / "standard", arm="standard", guidance_scale=0.0, steps=12, seed=7)
    guided = written_config(tmp_path / "guided", arm="guided", guidance_scale=3.5, steps=20, seed=11, perturb_ratio=0.3)
    arms = [make_arm("standard", 0.0, seed=1), make_arm("guided", 1.1, seed=2)]
    arms[0].config, arms[1].config = standard, guided
    built = build_report(arms, "t")
    cells = settings_cells(built.html)
    assert cells["Guidance w"] == ["none", "3.5"]
    assert cells["Steps"] == ["12", "20"] and cells["Seed"] == ["7", "11"]
    assert cells["Method"] == ["standard", "self-guided"] and cells["Perturb ratio"] == ["—", "0.3"]
    assert cells["Model"] == ["bundled:digits"] * 2 and "Preset" not in cells  # unset settings are left out
    assert '<td class="same">bundled:digits</td>' in built.html  # shared values are greyed, differing ones not
    assert "guided settings: Model bundled:digits, Method self-guided, Sampler ancestral, Steps 20, Guidance w 3.5" in built.markdown
    assert "Seed 11" in built.markdown.split("guided settings:")[1]
    assert "<h2>Settings</h2>" not in build_report([make_arm("a", 0.0, seed=1)], "t").html  # no config: no section


def test_settings_of_a_baseline_and_text_prompts():
    from minority_core.report.settings import run_settings

    config = {"model": "latent:/m", "seed": 3, "sampler": {"method": "boost-and-skip", "sampler": "ancestral", "steps": 50, "guidance": None,
                                                           "gamma": 4.0, "skip": 3, "prompts": ["a", "b", "c", "d", "e"], "cfg_scale": 7.5}}
    settings = run_settings(config)
    assert settings["Boost γ"] == "4" and settings["Skipped steps"] == "3" and settings["Guidance w"] == "none"
    assert settings["Prompts"] == "a, b, c, d, … (5 in all)" and settings["CFG scale"] == "7.5"
    assert "DDIM η" not in settings and "Perturb ratio" not in settings
    assert run_settings(None) == {} and run_settings({"seed": 0}) == {"Seed": "0"}  # older or partial manifests


def warnings_box(page: str) -> str:
    match = re.search(r'<section class="warnings" role="alert">.*?</section>', page)
    return match.group(0) if match else ""


def test_a_normal_run_has_no_warnings(report):
    assert report.warnings == [] and warnings_box(report.html) == "" and "Warning" not in report.markdown


def test_all_out_of_support_run_is_warned_about():
    lost = make_arm("lost", 0.5, seed=4, out_of_support=1.0)
    built = build_report([make_arm("standard", 0.0, seed=5), lost], "t")
    assert len(built.warnings) == 1 and built.warnings[0].startswith("lost: all 120 samples are out of the reference support")
    box = warnings_box(built.html)
    assert "lost: all 120 samples are out of the reference support (none in support)" in box
    assert built.html.index(box) < built.html.index('class="glance"')  # the first thing a reader sees
    assert "- **Warning:** lost: all 120 samples" in built.markdown
    mostly = make_arm("mostly", 0.5, seed=4, out_of_support=0.8)
    out = 1 - mostly.scores["in_support"].mean()
    assert build_report([mostly], "t").warnings == [
        f"mostly: {100 * out:.1f} % of samples are out of the reference support (only {int(mostly.scores['in_support'].sum())} in "
        "support); its rarest samples are mostly off the data, not rare data."]


def test_identical_and_duplicate_samples_are_warned_about():
    same = make_arm("same", 0.0, seed=6)
    same.scores["avgknn"][:] = 2.5
    assert build_report([same], "t").warnings == [
        "same: all 120 samples have the same AvgkNN: they are very likely identical (a collapsed sampler, or one seed for every sample)."]
    dup = make_arm("dup", 0.0, seed=6)
    dup.scores["avgknn"][60:] = dup.scores["avgknn"][:60]  # every sample twice
    assert build_report([dup], "t").warnings == ["dup: 60 of 120 samples repeat another sample's AvgkNN exactly (60 distinct values): likely duplicate samples."]


def test_non_finite_and_empty_runs_are_warned_about():
    broken = make_arm("broken", 0.0, seed=6)
    broken.scores["avgknn"][:5] = np.nan
    assert build_report([broken], "t").warnings == [
        "broken: 5 of 120 samples have no finite AvgkNN; those samples are left out of the means, histograms and grids."]
    empty = ArmResult("empty", {"avgknn": np.zeros(0), "in_support": np.zeros(0, bool)}, {})
    assert build_report([empty], "t").warnings[0].startswith("empty: no samples were scored")


def tiles_of(page: str) -> list[dict]:
    """Each tile on the page: its tooltip, caption lines and embedded PNG, in page order."""
    found = re.findall(r'<figure class="tile" title="([^"]*)"><img class="[^"]*" width="(\d+)" height="(\d+)" '
                       r'src="data:image/png;base64,([^"]+)" alt="[^"]*"><figcaption>(.*?)</figcaption></figure>', page)
    return [{"title": html.unescape(t), "size": (int(w), int(h)), "png": base64.b64decode(data),
             "lines": [html.unescape(x) for x in re.findall(r"<div[^>]*>(.*?)</div>", caption)]} for t, w, h, data, caption in found]


def test_each_tile_carries_its_score_label_and_support():
    arm = make_arm("guided", 0.5, seed=8, n=60)
    arm.labels = np.arange(60) % 10
    built = build_report([arm], "t")
    tiles = tiles_of(built.html)
    avgknn = arm.scores["avgknn"]
    rarest, least = np.argsort(-avgknn, kind="stable")[:16], np.argsort(avgknn, kind="stable")[:16]
    assert len(tiles) == 32
    supported = arm.scores["in_support"] & np.isfinite(arm.scores["rarity"])
    for tile, row in zip(tiles, [*rarest, *least], strict=True):
        assert tile["lines"][0] == f"AvgkNN {format_number(avgknn[row])}"
        assert tile["lines"][1] == f"label {row % 10}"
        assert ("out of support" in tile["lines"]) == (not supported[row])
        assert tile["lines"][-1] == f"guided-{row:05d}" and tile["title"].startswith(f"guided-{row:05d} · AvgkNN ")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(tile["png"]))), arm.images[row])  # the tile is that sample
        assert tile["size"] == (64, 64)  # 8×8 drawn 8× larger (pixelated, no interpolation)
    assert not any(line.startswith("label") for t in tiles_of(build_report([make_arm("a", 0, seed=8)], "t").html) for line in t["lines"])


def test_tile_prompts_and_large_images():
    arm = make_arm("big", 0.0, seed=9, n=20)
    arm.images = np.random.default_rng(0).integers(0, 256, (20, 256, 192, 3), dtype=np.uint8)
    arm.prompts = [f"prompt <{i}>" for i in range(20)]
    tile = tiles_of(build_report([arm], "t").html)[0]
    assert tile["size"] == (96, 128)  # drawn down to MAX_TILE_PX, aspect kept; the PNG stays whole
    assert Image.open(io.BytesIO(tile["png"])).size == (192, 256)
    assert tile["lines"][-1].startswith("“prompt <") and "“prompt <" in tile["title"]


def test_labels_are_checked():
    arm = make_arm("a", 0.0, seed=9, n=20)
    arm.labels = [1, 2]
    with pytest.raises(ValueError, match="give one label per sample") as err:
        build_report([arm], "t")
    assert "\n" not in str(err.value)
    arm.labels, arm.config = None, "not a dict"
    with pytest.raises(ValueError, match="config must be the run's config dict"):
        build_report([arm], "t")


def test_wide_tables_are_in_a_scrolling_container(report):
    assert re.search(r'<div class="scroll" role="region" tabindex="0" aria-label="Headline numbers"><table class="wide">', report.html)
    assert re.search(r"\.scroll\{overflow-x:auto", report.html)
    assert "white-space:nowrap" in report.html  # cells keep their width, so a wide table scrolls instead of squeezing


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_knn_accuracy_from_the_reference_meta(tmp_path, kind):
    import json

    from minority_core.metrics import ReferenceSet

    features = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    ReferenceSet.build(features, k_lof=5, k_rarity=3, index=kind).save(str(tmp_path / "index"))
    accuracy = json.loads((tmp_path / "index" / "meta.json").read_text())["accuracy"]
    notes = re.search(r'<ul class="notes">(.*?)</ul>', build_report([make_arm("a", 0.0, seed=1)], "t", notes=["n"], knn_accuracy=accuracy).html).group(1)
    if kind == "exact":
        assert "<li>kNN accuracy: exact search (brute force), no approximation in the scores.</li>" in notes
    else:
        checked = f"{accuracy['checked_samples']:,}"
        assert f"checked against brute force on {checked} samples): max relative error AvgkNN " in notes
        assert f"{100 * accuracy['share_within_1pct']:.1f} % of samples within 1 %" in notes
    assert "kNN accuracy" not in build_report([make_arm("a", 0.0, seed=1)], "t").html
    with pytest.raises(ValueError, match="knn_accuracy must be"):
        build_report([make_arm("a", 0.0, seed=1)], "t", knn_accuracy="exact")


def test_a_single_arm_says_it_has_no_baseline():
    line = re.search(r'class="glance">.*?</section>', build_report([make_arm("guided", 0.0, seed=1)], "t").html).group(0)
    assert "guided only: AvgkNN mean" in line and "no baseline arm" in line
