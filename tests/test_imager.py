"""The Raspberry Pi Imager repository (`<cluster>.imager.json`, builder/imager.py): valid against a schema written from
Imager's documentation (tests/data/imager-os-list.schema.json), and every size and checksum true of the files."""

import hashlib
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest
import yaml
from test_outputs import node_build  # noqa: F401 (fixture)

from builder import config, imager
from builder.errors import PibuildError
from builder.image import output_name

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "tests/data/imager-os-list.schema.json").read_text())

pytestmark = pytest.mark.skipif(not shutil.which("xz"), reason="needs xz-utils")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cluster_for(tmp_path: Path, **base) -> config.Cluster:
    data = yaml.safe_load((REPO / "examples/cluster.yaml").read_text())
    data["base"].update(base)
    return config.from_dict(data, tmp_path / "cluster.yaml")


def fake_outputs(cluster: config.Cluster, outdir: Path) -> list[Path]:
    """What `pibuild all` leaves per node, small: a sparse .img with some data and its .img.sha256 (sha256sum's)."""
    outdir.mkdir(exist_ok=True)
    images = []
    for i, node in enumerate(cluster.nodes):
        img = outdir / f"{output_name(cluster, node.name)}.img"
        with open(img, "wb") as f:
            f.truncate(8 << 20)
            f.seek(1 << 20)
            f.write(os.urandom(4096) * (i + 1))
        sums = subprocess.run(["sha256sum", img.name], cwd=outdir, capture_output=True, text=True, check=True)
        (outdir / f"{img.name}.sha256").write_text(sums.stdout)
        images.append(img)
    return images


def path_of(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file" and parts.netloc == "", url
    return Path(unquote(parts.path))


def test_repository_matches_imagers_format_and_the_files(tmp_path):
    cluster = cluster_for(tmp_path)
    out = tmp_path / "out"
    images = fake_outputs(cluster, out)
    dest = imager.write_repo(cluster, out, images)
    assert dest == out / "clst-01.imager.json"
    repo = json.loads(dest.read_text())
    jsonschema.validate(repo, SCHEMA)

    # One entry for the cluster, its subitems the nodes, in the config's order.
    [category] = repo["os_list"]
    assert "clst-01" in category["name"]
    entries = category["subitems"]
    assert [e["name"].split()[0] for e in entries] == ["dns-pm01", "dns-pm02"]
    for entry, node, img in zip(entries, cluster.nodes, images, strict=True):
        xz = path_of(entry["url"])
        assert xz == img.with_name(img.name + ".xz") and xz.is_file()
        data = xz.read_bytes()
        plain = lzma.decompress(data)
        assert entry["image_download_size"] == len(data) == xz.stat().st_size
        assert entry["image_download_sha256"] == sha256(data)
        assert entry["extract_size"] == len(plain) == img.stat().st_size
        assert entry["extract_sha256"] == sha256(plain) == sha256(img.read_bytes())
        assert Path(f"{xz}.sha256").read_text().split()[0] == sha256(data)
        assert entry["init_format"] == "none"  # Imager offers no OS customisation: the image is its node
        assert node.address in entry["name"] and node.address in entry["description"]
        assert path_of(entry["icon"]).is_file()
    # The boards' tags (armhf: 32-bit), and Imager's device step offering exactly those boards.
    assert [e["devices"] for e in entries] == [["pi3-32bit"], ["pi2-32bit"]]
    devices = repo["imager"]["devices"]
    assert [(d["name"], d["tags"], d["matching_type"]) for d in devices] == [
        ("Raspberry Pi 3 Model B", ["pi3-32bit"], "exclusive"),
        ("Raspberry Pi 2 Model B v1.1 (Cortex-A7, 32-bit only)", ["pi2-32bit"], "exclusive")]
    assert os.stat(dest).st_mode & 0o777 == 0o644
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_arm64_tags_and_a_base_url(tmp_path):
    data = yaml.safe_load((REPO / "examples/cluster.yaml").read_text())
    data["base"]["arch"] = "arm64"
    data["nodes"][1]["model"] = "pi4b"
    cluster = config.from_dict(data, tmp_path / "cluster.yaml")
    out = tmp_path / "out dir"
    images = fake_outputs(cluster, out)
    repo = json.loads(imager.write_repo(cluster, out, images, base_url="https://example.org/cards/").read_text())
    jsonschema.validate(repo, SCHEMA)
    entries = repo["os_list"][0]["subitems"]
    assert [e["devices"] for e in entries] == [["pi3-64bit"], ["pi4-64bit"]]
    assert [e["url"] for e in entries] == [f"https://example.org/cards/{img.name}.xz" for img in images]
    assert repo["os_list"][0]["icon"] == "https://example.org/cards/clst-01.imager-icon.svg"


def test_a_single_node_lists_that_node(tmp_path):
    cluster = cluster_for(tmp_path)
    images = fake_outputs(cluster, tmp_path / "out")
    repo = json.loads(imager.write_repo(cluster, tmp_path / "out", images[1:]).read_text())
    jsonschema.validate(repo, SCHEMA)
    assert [e["name"].split()[0] for e in repo["os_list"][0]["subitems"]] == ["dns-pm02"]


def test_an_image_without_its_checksum_is_refused(tmp_path):
    cluster = cluster_for(tmp_path)
    images = fake_outputs(cluster, tmp_path / "out")
    (tmp_path / "out" / f"{images[0].name}.sha256").write_text(f"{'0' * 64}  other.img\n")
    with pytest.raises(PibuildError, match="not the checksum of clst-01-dns-pm01.img; build the node again"):
        imager.write_repo(cluster, tmp_path / "out", images)
    assert not (tmp_path / "out" / "clst-01.imager.json").exists()


@pytest.mark.parametrize("breakage", ["no-checksum", "bad-format", "unknown-tag", "customisable-key-typo"])
def test_the_schema_rejects_what_imager_does_not_read(tmp_path, breakage):
    """The schema can fail: each breakage of a valid repository is caught."""
    cluster = cluster_for(tmp_path)
    images = fake_outputs(cluster, tmp_path / "out")
    repo = json.loads(imager.write_repo(cluster, tmp_path / "out", images).read_text())
    entry = repo["os_list"][0]["subitems"][0]
    if breakage == "no-checksum":
        del entry["extract_sha256"]
    elif breakage == "bad-format":
        entry["init_format"] = "auto"
    elif breakage == "unknown-tag":
        entry["devices"] = ["raspberrypi3"]
    else:
        repo["imager"]["device"] = repo["imager"].pop("devices")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(repo, SCHEMA)


def test_cli_all_imager_for_real_on_a_stand_in_cluster_image(node_build):  # noqa: F811 (fixture)
    """`pibuild all --imager` in-process: the node phase runs for real on test_outputs' stand-in cluster image, then
    each .img gets its .img.xz (0600) and .img.xz.sha256, and the repository lists them, valid and true."""
    from click.testing import CliRunner

    from builder.cli.app import cli

    cluster, work, _ = node_build
    out = work / "out"
    result = CliRunner().invoke(cli, ["-c", str(work / "cluster.yaml"), "all", "-o", str(out), "--imager"])
    assert result.exit_code == 0, result.output
    repo = json.loads((out / "clst-64.imager.json").read_text())
    jsonschema.validate(repo, SCHEMA)
    entries = repo["os_list"][0]["subitems"]
    assert len(entries) == len(cluster.nodes)
    for entry, node in zip(entries, cluster.nodes, strict=True):
        img = out / f"clst-64-{node.name}.img"
        xz = path_of(entry["url"])
        assert xz == out / f"{img.name}.xz"
        assert entry["extract_sha256"] == sha256(img.read_bytes()) == (out / f"{img.name}.sha256").read_text()[:64]
        assert entry["image_download_sha256"] == sha256(xz.read_bytes())
        assert os.stat(xz).st_mode & 0o777 == 0o600
    assert "rpi-imager --repo" in result.output
    # --xz again on an unchanged node: neither the image nor its .img.xz is made again.
    xz = out / "clst-64-dns-pm01.img.xz"
    mtime = xz.stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["-c", str(work / "cluster.yaml"), "node", "dns-pm01", "-o", str(out), "--xz"])
    assert result.exit_code == 0, result.output
    assert f"{out / 'clst-64-dns-pm01.img'}: up to date" in result.output and f"{xz}: up to date" in result.output
    assert xz.stat().st_mtime_ns == mtime


def test_cli_refuses_a_bad_imager_url_before_building(tmp_path):
    from conftest import run_pibuild

    proc = run_pibuild("all", "--imager-url", "ftp://host/cards", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--imager-url 'ftp://host/cards': give the URL the .img.xz files will be at" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_every_model_has_one_imager_family():
    from builder.releases import IMAGER_FAMILIES, MODELS, imager_tag

    listed = [m for models in IMAGER_FAMILIES.values() for m in models]
    assert sorted(listed) == sorted(MODELS)  # each model once
    assert imager_tag("pizero2w", "arm64") == "pi3-64bit" and imager_tag("cm4", "armhf") == "pi4-32bit"
