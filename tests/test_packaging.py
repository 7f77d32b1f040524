"""`pip install .` (not editable) into a fresh venv gives a working `pibuild` with its data directories.

stages/, overlays/, firstboot/, clients/, examples/ and bases/ must ship inside the wheel: `pipx install .` must work,
not only a checkout. These tests install from the checkout this file is in; pip fetches hatchling and the
dependencies from PyPI (about 30-60 s).
"""

import ast
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERBS = ["validate", "render", "node", "all", "flash", "smoke", "lab", "pigen", "clients"]
DATA_DIRS = ["stages", "overlays", "firstboot", "clients", "examples", "bases"]
NAMED2 = "usr/lib/ocf/resource.d/pibuild/named2"


def clean_env() -> dict:
    """The environment without anything that would let the checkout's builder/ leak into the venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def run(argv, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def data_files(root: Path) -> dict[str, bool]:
    """Relative path -> executable, for every file under root that ships (no caches, nothing .gitignore names:
    a checkout's examples/secrets/ stays out of the wheel)."""
    ignored = set()
    if (REPO / ".git").exists() and REPO in root.parents:
        out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", str(root)],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        ignored = {(REPO / line).relative_to(root).as_posix() for line in out.splitlines()}
    return {rel: bool(p.stat().st_mode & stat.S_IXUSR)
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and (rel := p.relative_to(root).as_posix()) not in ignored}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with pibuild installed from the checkout, non-editable."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    proc = run([sys.executable, "-m", "venv", venv], cwd=root)
    assert proc.returncode == 0, proc.stderr
    proc = run([venv / "bin" / "python", "-m", "pip", "install", "--no-cache-dir", REPO], cwd=root, timeout=900)
    assert proc.returncode == 0, f"pip install {REPO} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return venv


@pytest.fixture(scope="module")
def site_builder(venv) -> Path:
    """The installed builder package (asked from an empty directory, so the checkout cannot shadow it)."""
    empty = venv.parent / "empty-for-import"
    empty.mkdir()
    proc = run([venv / "bin" / "python", "-c", "import builder; print(builder.__file__)"], cwd=empty)
    assert proc.returncode == 0, proc.stderr
    package = Path(proc.stdout.strip()).parent
    assert venv in package.parents, f"builder imported from {package}, not from the venv"
    return package


def test_installed_not_editable(venv, site_builder):
    assert REPO not in site_builder.parents
    # An editable install would leave a .pth or a finder pointing back at the checkout.
    site = site_builder.parent
    for pth in site.glob("*.pth"):
        assert str(REPO) not in pth.read_text(), pth


def test_help_lists_every_verb(venv, tmp_path):
    proc = run([venv / "bin" / "pibuild", "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.split("Commands:", 1)[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.strip()}
    assert set(VERBS) <= listed, f"missing: {set(VERBS) - listed}\n{proc.stdout}"


def test_every_verb_module_imports_and_help_lists_it(tmp_path):
    """Every verb is imported for real: a module that fails to import fails `--help` itself (no placeholder verb)."""
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.split("Commands:", 1)[1]
    assert {line.split()[0] for line in commands.splitlines() if line.strip()} == set(VERBS), proc.stdout
    assert "not available" not in proc.stdout


def test_only_the_command_line_imports_click():
    """The core reports through builder.progress; click belongs to builder/cli/ alone."""
    importers = []
    for path in sorted((REPO / "builder").rglob("*.py")):
        if (REPO / "builder" / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "click" or n.startswith("click.") for n in names):
                importers.append(str(path.relative_to(REPO)))
    assert importers == []


def test_version_is_the_distributions(venv, tmp_path):
    meta = run([venv / "bin" / "python", "-c", "import importlib.metadata as m; print(m.version('pibuild'))"],
               cwd=tmp_path)
    assert meta.returncode == 0, meta.stderr
    proc = run([venv / "bin" / "pibuild", "--version"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert meta.stdout.strip() in proc.stdout


def test_data_directories_ship_in_the_wheel(site_builder):
    for name in DATA_DIRS:
        source, installed = REPO / name, site_builder / name
        assert installed.is_dir(), f"{name}/ is not in the installed package"
        # Same files, and an executable stays executable (render gives the image 0755 only if it is).
        assert data_files(installed) == data_files(source), name
    assert (site_builder / "overlays" / "common" / NAMED2).stat().st_mode & stat.S_IXUSR


def test_validate_in_an_empty_directory_uses_the_bundled_example(venv, site_builder, tmp_path):
    proc = run([venv / "bin" / "pibuild", "validate"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "using the bundled example" in proc.stderr
    assert str(site_builder / "examples" / "cluster.yaml") in proc.stderr
    assert "clst-01" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_render_from_the_installed_wheel(venv, site_builder, tmp_path):
    proc = run([venv / "bin" / "pibuild", "render", "dns-pm01", "-o", "tree"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    tree = tmp_path / "tree"
    named2 = tree / NAMED2
    assert named2.is_file()
    assert stat.S_IMODE(named2.stat().st_mode) == 0o755
    assert (tree / "usr/lib/pibuild/pibuild-firstboot").is_file()
    assert (tree / "etc/systemd/system/pibuild-firstboot.service").is_file()
    assert (tree / "etc/hostname").read_text() == "dns-pm01\n"
    clients = run([venv / "bin" / "pibuild", "clients", "--only", "resolv.conf"], cwd=tmp_path)
    assert clients.returncode == 0 and "nameserver 192.168.100.11\n" in clients.stdout, clients.stderr
    # The secret is created in the current directory, never inside the installation.
    secret = tmp_path / "secrets" / "hacluster"
    assert secret.is_file()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (tree / "etc/pibuild/hacluster-password").read_text() == secret.read_text()
    assert not list(site_builder.rglob("hacluster")), "a secret was written inside site-packages"


def test_a_checkouts_secrets_never_ship(tmp_path):
    """`pibuild -c examples/cluster.yaml` keeps the example's secrets in examples/secrets/: a wheel built from that
    checkout must not carry them (hatch's force-include would: it ignores .gitignore)."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".*_cache", "out"))
    (src / "examples" / "secrets").mkdir(exist_ok=True)
    (src / "examples" / "secrets" / "hacluster").write_text("not for the wheel\n")
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", tmp_path / "dist", src],
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "builder/examples/cluster.yaml" in names and "builder/stages/README.md" in names
    assert [n for n in names if "secrets/" in n] == []


def test_sdist_builds_a_complete_wheel(venv, tmp_path):
    """`python -m build` makes the sdist, then the wheel from the sdist: the sdist must carry every data directory."""
    proc = run([venv / "bin" / "python", "-m", "pip", "install", "build"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = run([venv / "bin" / "python", "-m", "build", "--outdir", tmp_path / "dist", REPO], cwd=tmp_path,
               timeout=900)
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = set(whl.namelist())
    for name in DATA_DIRS:
        for rel in data_files(REPO / name):
            assert f"{name}/{rel}" in in_sdist, f"{name}/{rel} is not in {top}.tar.gz"
            assert f"builder/{name}/{rel}" in in_wheel, f"builder/{name}/{rel} is not in {wheel.name}"
