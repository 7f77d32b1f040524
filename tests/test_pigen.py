"""`pibuild pigen NODE -o DIR`: the same node as a pi-gen build (issue 9).

- structure: DIR/config sourced by bash gives pi-gen's variables; DIR/stage-pibuild-NODE/ is a pi-gen stage
  (prerun.sh, EXPORT_IMAGE, NN-name/ sub-stages of NN-packages, NN-run.sh, NN-run-chroot.sh, files/);
- every script passes `bash -n` and shellcheck, with values from cluster.yaml that try to break out of their quotes;
- equivalence: the exported stage runs in a harness that does what pi-gen's build.sh does for a stage (run_stage,
  run_sub_stage, copy_previous, the variables it exports), on a small base root file system. Its host steps run for
  real and must leave exactly the tree `pibuild node` writes (render_node() through write_tree: same paths, bytes,
  modes, link targets); its on_chroot records each script piped into it, with the environment, and `bash -n`s it: the
  chroot steps must be stages/'s own scripts byte for byte, seeing the variables `pibuild node` gives them, then the
  hacluster password step, whose hash must verify against the secret.
- image tier (optional, `-m image`): the whole stage, chroot steps included, runs for real in an amd64 Debian root
  file system (mmdebstrap, cached) with a real chroot, next to the same steps run the way `pibuild node` runs them;
  the two trees must match, /etc/passwd, /etc/shadow's password fields and authorized_keys included.
"""

import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_pibuild as pibuild

from builder import config, export, image, render, resources, secrets, stages
from builder.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cluster.yaml"
NODES = ("dns-pm01", "dns-pm02")
KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0 o'brien $(touch /tmp/pibuild-pwned) `id` \\ \"x\" ;",
        "ssh-rsa AAAAB3NzaC1yc2E= second key"]
LOGIN_HASH = "$y$j9T$abc/def$0123456789abcdefABCDEF./xyz"
GENERATED_SUBSTAGES = ("node-files", "hacluster-password")
STEP_RE = re.compile(r"^\d\d-(packages|run\.sh|run-chroot\.sh)$")

# What pi-gen's build.sh does for one stage: export BASE_DIR, source the config, set ARCH as its branch does, export
# the config's variables, run_stage (prerun.sh, then each
# sub-stage directory in glob order) and run_sub_stage (for i in 00..99: packages, run.sh if executable, run-chroot.sh
# piped into on_chroot), with copy_previous and on_chroot as exported functions. on_chroot records instead of
# chrooting: the script (stdin) and the environment it would have carried into the chroot.
HARNESS = r"""#!/bin/bash -e
set -e  # (also when run as `bash harness.sh`, which ignores the -e above)
config=$1
STAGE_DIR=$(realpath "$2")
work=$3
# build.sh exports BASE_DIR (its checkout) before it sources the config, and the ARCH of its branch after.
export BASE_DIR="$work/pi-gen"
# shellcheck disable=SC1090
source "$config"
export ARCH=$4
export IMG_NAME RELEASE TARGET_HOSTNAME FIRST_USER_NAME FIRST_USER_PASS DISABLE_FIRST_BOOT_USER_RENAME
export PUBKEY_SSH_FIRST_USER ENABLE_SSH PUBKEY_ONLY_SSH DEPLOY_COMPRESSION
export STAGE_DIR PREV_ROOTFS_DIR="$work/prev/rootfs" ROOTFS_DIR="$work/stage/rootfs" RECORD="$work/chroot"
mkdir -p "$RECORD"
copy_previous() {
	if [ ! -d "${PREV_ROOTFS_DIR}" ]; then echo "Previous stage rootfs not found"; false; fi
	mkdir -p "${ROOTFS_DIR}"
	cp -a "${PREV_ROOTFS_DIR}/." "${ROOTFS_DIR}/"
}
on_chroot() {
	local n
	n=$(find "$RECORD" -name '*.sh' | wc -l)
	n=$(printf '%s/%02d' "$RECORD" "$n")
	cat > "$n.sh"
	env -0 > "$n.env"
	pwd > "$n.cwd"
	bash -n "$n.sh"
}
export -f copy_previous on_chroot
cd "$STAGE_DIR"
if [ -x prerun.sh ]; then ./prerun.sh; fi
for SUB_STAGE_DIR in "${STAGE_DIR}"/*; do
	if [ -d "${SUB_STAGE_DIR}" ] && [ ! -f "${SUB_STAGE_DIR}/SKIP" ]; then
		pushd "${SUB_STAGE_DIR}" > /dev/null
		for i in {00..99}; do
			if [ -f "${i}-packages" ]; then
				PACKAGES="$(sed -e 's/#.*//' < "${i}-packages")"
				if [ -n "$PACKAGES" ]; then
					on_chroot << EOF
apt-get -o Acquire::Retries=3 install -y $PACKAGES
EOF
				fi
			fi
			if [ -x "${i}-run.sh" ]; then ./"${i}-run.sh"; fi
			if [ -f "${i}-run-chroot.sh" ]; then on_chroot < "${i}-run-chroot.sh"; fi
		done
		popd > /dev/null
	fi
done
"""


@dataclass
class Exported:
    cluster: config.Cluster
    node: str
    dest: Path
    stage: Path
    password: str


def example_data(release: str = "bookworm") -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["base"]["release"] = release
    return data


def exported_for(data: dict, node: str, where: Path) -> Exported:
    where.mkdir(parents=True, exist_ok=True)
    cluster = config.from_dict(data, where / "cluster.yaml")
    stage = export.export_pigen(cluster, node, where / "pigen")
    return Exported(cluster, node, where / "pigen", stage, secrets.hacluster_password(cluster.hacluster_password_file))


def weird_login(data: dict) -> dict:
    data["login"] = {"user": "admin", "ssh_authorized_keys": KEYS, "password_hash": LOGIN_HASH}
    return data


VARIANTS = {
    "bookworm-pm01": (lambda: example_data("bookworm"), "dns-pm01"),
    "bookworm-pm02": (lambda: example_data("bookworm"), "dns-pm02"),
    "bullseye-pm01": (lambda: example_data("bullseye"), "dns-pm01"),
    "trixie-pm02": (lambda: example_data("trixie"), "dns-pm02"),
    "login-keys-hash": (lambda: weird_login(example_data("bookworm")), "dns-pm01"),
}


@pytest.fixture(params=list(VARIANTS), scope="module")
def exported(request, tmp_path_factory) -> Exported:
    make, node = VARIANTS[request.param]
    return exported_for(make(), node, tmp_path_factory.mktemp(request.param))




def sourced(config_file: Path, *names: str, cwd: Path | None = None, base_dir: Path | None = None) -> dict[str, str]:
    """Source the config with bash as build.sh does (BASE_DIR, the pi-gen checkout, exported first) and read
    variables back, NUL-separated."""
    script = 'set -e; source "$1"; shift; for n in "$@"; do printf "%s\\0" "${!n}"; done'
    env = {"PATH": os.environ["PATH"], **({"BASE_DIR": str(base_dir)} if base_dir else {})}
    proc = subprocess.run(["bash", "-c", script, "bash", str(config_file), *names], cwd=cwd, env=env,
                          capture_output=True, check=True)
    return dict(zip(names, proc.stdout.decode().split("\0")[:-1], strict=True))


def scripts_of(dest: Path) -> list[Path]:
    """Every shell file of an export: the config, EXPORT_IMAGE (both sourced by build.sh), prerun.sh, *.sh."""
    found = [dest / "config"]
    for p in sorted(dest.rglob("*")):
        if p.is_file() and (p.name.endswith(".sh") or p.name == "EXPORT_IMAGE") and "files" not in p.parts:
            found.append(p)
    return found


# ---- structure --------------------------------------------------------------------------------------------------

def test_config_gives_pigen_its_variables(exported):
    c, node = exported.cluster, exported.node
    got = sourced(exported.dest / "config", "IMG_NAME", "RELEASE", "ARCH", "TARGET_HOSTNAME", "FIRST_USER_NAME",
                  "FIRST_USER_PASS", "DISABLE_FIRST_BOOT_USER_RENAME", "PUBKEY_SSH_FIRST_USER", "ENABLE_SSH",
                  "DEPLOY_COMPRESSION", "STAGE_LIST", base_dir=Path("/opt/pi-gen"))
    assert got["STAGE_LIST"] == ("/opt/pi-gen/stage0 /opt/pi-gen/stage1 /opt/pi-gen/stage2 "
                                 f"{exported.dest}/stage-pibuild-{node}")
    assert Path(got["STAGE_LIST"].split()[-1]).resolve() == exported.stage.resolve()
    assert got["IMG_NAME"] == c.name == "clst-01"
    assert got["RELEASE"] == c.base.release
    # build.sh sets ARCH from its branch, after the config: the config names the branch instead.
    assert got["ARCH"] == ""
    assert f"from the {export.pigen_branch(c)} branch" in (exported.dest / "config").read_text()
    assert got["TARGET_HOSTNAME"] == node
    assert got["FIRST_USER_NAME"] == c.login.user == "admin"
    assert got["PUBKEY_SSH_FIRST_USER"] == "\n".join(c.login.ssh_authorized_keys)
    assert got["ENABLE_SSH"] == "1"
    # No first-boot rename wizard on a headless node; pi-gen insists on a FIRST_USER_PASS then.
    assert got["DISABLE_FIRST_BOOT_USER_RENAME"] == "1"
    assert len(got["FIRST_USER_PASS"]) >= 20
    assert got["DEPLOY_COMPRESSION"] == "xz"
    assert not Path("/tmp/pibuild-pwned").exists()


def test_config_finds_the_stage_from_anywhere(exported, tmp_path):
    """build.sh resolves every STAGE_LIST entry against the directory it was started in, which may be any: each entry
    is absolute. The stage is found beside the config (`build.sh -c DIR/config`, DIR relative or not), else in the
    pi-gen checkout (config and stage copied there, or build-docker.sh's /config)."""
    checkout = tmp_path / "pi-gen"
    checkout.mkdir()
    elsewhere = tmp_path / "somewhere/else"
    elsewhere.mkdir(parents=True)
    base = [f"{checkout}/stage{i}" for i in range(3)]

    def stage_list(config_file: Path, cwd: Path) -> list[str]:
        got = sourced(config_file, "STAGE_LIST", cwd=cwd, base_dir=checkout)["STAGE_LIST"].split()
        assert all(Path(p).is_absolute() for p in got), got
        return got

    beside = stage_list(Path(os.path.relpath(exported.dest / "config", elsewhere)), elsewhere)
    assert beside == [*base, str(exported.stage)]
    shutil.copytree(exported.stage, checkout / exported.stage.name, symlinks=True)
    shutil.copy(exported.dest / "config", checkout / "config")
    assert stage_list(checkout / "config", elsewhere) == [*base, str(checkout / exported.stage.name)]
    alone = tmp_path / "config"
    shutil.copy(exported.dest / "config", alone)
    assert stage_list(alone, elsewhere) == [*base, str(checkout / exported.stage.name)]


def test_stage_stops_a_build_for_the_wrong_arch(exported, tmp_path):
    """pi-gen's armhf branch sets ARCH=armhf whatever the config says: the exported stage stops there, naming the
    branch to use, before it touches a root file system."""
    other = "armhf" if exported.cluster.base.arch == "arm64" else "arm64"
    with pytest.raises(AssertionError) as failed:
        run_harness(exported, tmp_path / "work", arch=other)
    message = str(failed.value)
    assert f"build it from pi-gen's {export.pigen_branch(exported.cluster)} branch (this checkout builds {other})" \
        in message
    assert not (tmp_path / "work/stage/rootfs").exists()


def test_a_path_with_spaces_is_refused(tmp_path):
    """build.sh word-splits STAGE_LIST: the export says so instead of writing a stage pi-gen would run as two."""
    with pytest.raises(UsageError, match="splits STAGE_LIST at white space"):
        exported_for(example_data(), "dns-pm01", tmp_path / "my exports")
    assert not (tmp_path / "my exports/pigen").exists()


def test_pigen_branch_per_release_and_arch(tmp_path):
    data = example_data("bookworm")
    assert export.pigen_branch(config.from_dict(data, tmp_path / "a.yaml")) == "bookworm"
    data["base"]["arch"] = "arm64"
    data["nodes"][1]["model"] = "pi3b"
    assert export.pigen_branch(config.from_dict(data, tmp_path / "b.yaml")) == "bookworm-arm64"


def test_stage_has_the_structure_pigen_expects(exported):
    stage = exported.stage
    assert stage.name == f"stage-pibuild-{exported.node}"
    assert os.access(stage / "prerun.sh", os.X_OK)
    assert "copy_previous" in (stage / "prerun.sh").read_text()
    suffix = subprocess.run(["bash", "-c", 'source "$1"; printf %s "$IMG_SUFFIX"', "bash", stage / "EXPORT_IMAGE"],
                            capture_output=True, text=True, check=True).stdout
    assert suffix == f"-{exported.node}"
    subs = sorted(p.name for p in stage.iterdir() if p.is_dir())
    expected = [p.name for p in stages.substages()]
    expected += [f"{len(expected) + i:02d}-{name}" for i, name in enumerate(GENERATED_SUBSTAGES)]
    assert subs == expected
    assert sorted(p.name for p in stage.iterdir() if not p.is_dir()) == ["EXPORT_IMAGE", "prerun.sh"]
    for sub in stage.iterdir():
        if not sub.is_dir():
            continue
        names = [p.name for p in sub.iterdir()]
        assert names, sub
        for name in names:
            assert STEP_RE.match(name) or name in ("files", export.WRAPPED_DIR), f"{sub.name}/{name}"
            if name.endswith("-run.sh"):
                assert os.access(sub / name, os.X_OK), f"{sub.name}/{name}: pi-gen runs it only when executable"
    assert (stage / "00-cluster-packages/00-packages").is_file()
    files = stage / f"{len(expected) - 2:02d}-node-files"
    assert (files / "00-run.sh").is_file() and (files / "files").is_dir()
    assert (stage / f"{len(expected) - 1:02d}-hacluster-password/00-run-chroot.sh").is_file()


def test_scripts_pass_bash_n_and_shellcheck(exported):
    checked = scripts_of(exported.dest)
    assert len(checked) >= 7
    for script in checked:
        first = script.read_text().splitlines()[0]
        if script.name.endswith(".sh"):
            assert first == "#!/bin/bash -e", script
        else:
            assert first.startswith("# shellcheck shell=bash"), script
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
        proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}:\n{proc.stdout}"


def test_stages_are_copied_byte_for_byte(exported):
    """One source of truth: every file of stages/ is in the export unchanged (a script pi-gen lacks a variable for
    sits under pibuild/, run by a generated NN-run.sh)."""
    src_root = resources.stages_dir()
    for src in sorted(p for p in src_root.rglob("*") if p.is_file() and p.name != "README.md"):
        rel = src.relative_to(src_root)
        plain = exported.stage / rel
        wrapped = exported.stage / rel.parent / export.WRAPPED_DIR / rel.name
        copy = plain if plain.is_file() else wrapped
        assert copy.is_file(), f"stages/{rel} is not in the export"
        assert copy.read_bytes() == src.read_bytes(), f"stages/{rel}"


def test_generated_files_are_pibuilds():
    """Nothing in the export is written by hand: generated files carry the marker that lets a re-export replace
    them (and an existing config without it is refused)."""
    assert export.MARKER in export.password_script("$6$salt$hash")
    assert export.MARKER in export.node_files_script([])


# ---- equivalence: the stage run as pi-gen runs it gives the tree `pibuild node` writes ---------------------------

def make_base_rootfs(root: Path) -> None:
    """A small stand-in for pi-gen's stage2 root file system: files the node's tree overwrites (other content,
    other modes), a symlink where one goes, and files nothing touches."""
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/hostname").chmod(0o664)
    (root / "etc/hosts").write_text("127.0.1.1\traspberrypi\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/bash\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nhacluster:!:19000::::::\n")
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/systemd/system/multi-user.target.wants/ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    (root / "etc/systemd/system/multi-user.target.wants/pibuild-firstboot.service").symlink_to("/nowhere")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/true").write_bytes(b"\x7fELF-not-really")
    (root / "usr/bin/true").chmod(0o755)


def snapshot(root: Path) -> dict[str, tuple]:
    """path -> (kind, mode, uid, gid, content or link target), for everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", None, st.st_uid, st.st_gid, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, None)
            elif not stat.S_ISREG(st.st_mode):  # a device node, fifo or socket: never read it
                out[rel] = ("special", st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, p.read_bytes())
    return out


@dataclass
class Record:
    script: bytes
    env: dict[str, str]
    cwd: Path


def run_harness(e: Exported, work: Path, arch: str | None = None) -> tuple[Path, list[Record]]:
    """Run the stage as build.sh would; arch: the ARCH of the pi-gen branch (default: the config's)."""
    work.mkdir(parents=True, exist_ok=True)
    harness = work / "pigen-harness.sh"
    harness.write_text(HARNESS)
    make_base_rootfs(work / "prev/rootfs")
    arch = arch or (e.cluster.base.arch if e.cluster else "armhf")
    proc = subprocess.run(["bash", str(harness), str(e.dest / "config"), str(e.stage), str(work), arch],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = []
    for script in sorted((work / "chroot").glob("*.sh")):
        env_bytes = script.with_suffix(".env").read_bytes()
        env = dict(item.split("=", 1) for item in env_bytes.decode().split("\0") if "=" in item)
        records.append(Record(script.read_bytes(), env, Path(script.with_suffix(".cwd").read_text().strip())))
    return work / "stage/rootfs", records


def test_harness_is_clean_and_stops_on_a_failing_step(tmp_path):
    """The harness is the reference the export is checked against: shellcheck-clean, and a failing step fails it
    (as it fails pi-gen's build.sh)."""
    proc = subprocess.run(["shellcheck", "-s", "bash", "-"], input=HARNESS, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    stage = tmp_path / "out/stage-x"
    (stage / "00-x").mkdir(parents=True)
    (stage / "00-x/00-run.sh").write_text("#!/bin/bash -e\nfalse\ntouch \"${ROOTFS_DIR}/after\"\n")
    (stage / "00-x/00-run.sh").chmod(0o755)
    (stage / "01-y").mkdir()
    (stage / "01-y/00-run-chroot.sh").write_text("#!/bin/bash -e\ntrue\n")
    (tmp_path / "out/config").write_text("")
    with pytest.raises(AssertionError):
        run_harness(Exported(None, "x", tmp_path / "out", stage, ""), tmp_path / "work")
    assert not (tmp_path / "work/chroot/00.sh").exists()


def test_host_steps_lay_exactly_the_tree_pibuild_node_writes(exported, tmp_path):
    rootfs, _ = run_harness(exported, tmp_path / "pigen")
    # `pibuild node`: the same base, then render_node() through write_tree (image.build_node).
    expected = tmp_path / "pibuild/rootfs"
    make_base_rootfs(expected)
    entries = render.render_node(exported.cluster, exported.node, exported.password)
    render.write_tree(entries, expected)
    got, want = snapshot(rootfs), snapshot(expected)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    # and the node's own files are all there (the base did not hide a missing one)
    for e in entries:
        assert (rootfs / e.path).is_symlink() if e.symlink else (rootfs / e.path).is_file(), e.path


def test_chroot_steps_are_the_stages_scripts_then_the_password(exported, tmp_path):
    _, records = run_harness(exported, tmp_path)
    cluster = exported.cluster
    env = stages.environment(cluster)
    # 1. packages: what pibuild's cluster image installs, in one apt-get line per NN-packages file
    packages = []
    chroot_steps = []
    for r in records:
        text = r.script.decode()
        if text.startswith("apt-get "):
            packages += text.split("install -y", 1)[1].split()
        else:
            chroot_steps.append(r)
    assert packages == stages.packages()
    # 2. the stages/ chroot scripts, byte for byte, in pibuild's order, with the variables pibuild gives them
    ours = [s for s in stages.steps() if s.kind == "run-chroot.sh"]
    assert len(chroot_steps) == len(ours) + 1
    for step, r in zip(ours, chroot_steps, strict=False):
        assert r.script == step.path.read_bytes(), str(step)
        for name, value in env.items():
            if re.search(rf"\b{name}\b", r.script.decode()):
                assert r.env.get(name) == value, f"{step}: {name}"
    login = chroot_steps[[s.substage.name for s in ours].index("02-login-user")]
    assert login.env["FIRST_USER_NAME"] == cluster.login.user
    assert login.env["PUBKEY_SSH_FIRST_USER"] == "\n".join(cluster.login.ssh_authorized_keys)
    assert login.env["FIRST_USER_PASS_HASH"] == (cluster.login.password_hash or "")
    # 3. last: the hacluster password, the hash of the same secret `pibuild node` hashes
    last = chroot_steps[-1].script.decode()
    m = re.search(r"^hacluster:(\$6\$([^$]+)\$\S+)$", last, re.M)
    assert m, last
    assert "chpasswd -e <<'EOF'" in last
    check = subprocess.run(["openssl", "passwd", "-6", "-salt", m.group(2), "-stdin"],
                           input=exported.password + "\n", capture_output=True, text=True, check=True)
    assert check.stdout.strip() == m.group(1)


def test_wrapped_steps_keep_pigens_order_and_get_their_variables(tmp_path):
    """A stages/ sub-stage whose NN-run.sh and NN-run-chroot.sh read pibuild variables pi-gen lacks: both still run,
    in pi-gen's order (run.sh, then run-chroot.sh), from the sub-stage directory, and see the values."""
    src = tmp_path / "stages/05-demo"
    (src / "files").mkdir(parents=True)
    (src / "files/x").write_text("payload\n")
    (src / "00-run.sh").write_text('#!/bin/bash -e\ninstall -m 644 files/x "${ROOTFS_DIR}/x"\n'
                                   'printf "%s" "$FIRST_USER_PASS_HASH" > "${ROOTFS_DIR}/host-saw"\n')
    (src / "00-run-chroot.sh").write_text('#!/bin/bash -e\necho "$FIRST_USER_PASS_HASH $ARCH"\n')
    (src / "01-run-chroot.sh").write_text("#!/bin/bash -e\necho untouched\n")
    stage = tmp_path / "out/stage-demo"
    stage.mkdir(parents=True)
    extra = {"FIRST_USER_PASS_HASH": "$6$s$h'q", "ARCH": "arm64"}
    export._copy_substage(src, stage / src.name, extra)
    sub = stage / src.name
    assert sorted(p.name for p in sub.iterdir()) == ["00-run.sh", "01-run-chroot.sh", "files", "pibuild"]
    assert (sub / "pibuild/00-run.sh").read_bytes() == (src / "00-run.sh").read_bytes()
    assert (sub / "pibuild/00-run-chroot.sh").read_bytes() == (src / "00-run-chroot.sh").read_bytes()
    assert (sub / "01-run-chroot.sh").read_bytes() == (src / "01-run-chroot.sh").read_bytes()
    for script in (sub / "00-run.sh", sub / "pibuild/00-run.sh"):
        assert subprocess.run(["shellcheck", str(script)], capture_output=True).returncode == 0
    (stage / "prerun.sh").write_text(export.PRERUN.format(header="", arch="arm64", branch="bookworm-arm64"))
    (stage / "prerun.sh").chmod(0o755)
    (tmp_path / "out/config").write_text("FIRST_USER_NAME=admin\n")
    e = Exported(None, "demo", tmp_path / "out", stage, "")
    rootfs, records = run_harness(e, tmp_path / "work", arch="arm64")
    assert (rootfs / "x").read_text() == "payload\n"
    assert (rootfs / "host-saw").read_text() == extra["FIRST_USER_PASS_HASH"]
    assert [r.script for r in records] == [(src / "00-run-chroot.sh").read_bytes(),
                                           (src / "01-run-chroot.sh").read_bytes()]
    assert records[0].env["FIRST_USER_PASS_HASH"] == extra["FIRST_USER_PASS_HASH"]
    assert records[0].env["ARCH"] == "arm64"
    assert records[0].cwd == sub


# ---- the command ------------------------------------------------------------------------------------------------

def test_cli_exports_the_bundled_example(tmp_path):
    proc = pibuild("pigen", "dns-pm01", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using the bundled example" in proc.stderr
    assert "holds the hacluster password" in proc.stderr
    stage = tmp_path / "out/stage-pibuild-dns-pm01"
    assert (tmp_path / "out/config").is_file() and stage.is_dir()
    assert "03-node-files/files/etc/hostname  0644" in proc.stdout
    assert "build.sh -c" in proc.stdout
    # the secret beside the (bundled) config is the one the export hashed and shipped
    secret = (tmp_path / "secrets/hacluster").read_text()
    assert (stage / "03-node-files/files/etc/pibuild/hacluster-password").read_text() == secret
    assert stat.S_IMODE((stage / "03-node-files/files/etc/pibuild/hacluster-password").stat().st_mode) == 0o600
    # The export is secret material: the directory pibuild made and the stage are its owner's alone.
    for path, want in ((tmp_path / "out", 0o700), (stage, 0o700), (tmp_path / "out/config", 0o600),
                       (stage / "04-hacluster-password", 0o700),
                       (stage / "04-hacluster-password/00-run-chroot.sh", 0o700)):
        assert stat.S_IMODE(path.stat().st_mode) == want, f"{path}: {stat.S_IMODE(path.stat().st_mode):04o}"
    # A directory that already exists is the user's: its mode is left alone.
    (tmp_path / "mine").mkdir(mode=0o755)
    (tmp_path / "mine").chmod(0o755)
    assert pibuild("pigen", "dns-pm01", "-o", "mine", cwd=tmp_path).returncode == 0
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "mine/stage-pibuild-dns-pm01").stat().st_mode) == 0o700
    proc = pibuild("pigen", "dns-pm02", "-o", "out2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out2/stage-pibuild-dns-pm02/03-node-files/files/etc/pibuild/hacluster-password").exists()
    assert "hacluster password" not in proc.stderr


def test_cli_unknown_node_and_missing_output(tmp_path):
    proc = pibuild("pigen", "dns-pm09", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "dns-pm09" in proc.stderr and "dns-pm01" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = pibuild("pigen", "dns-pm01", cwd=tmp_path)
    assert proc.returncode == 2 and "-o" in proc.stderr


def test_cli_uses_the_given_config(tmp_path):
    data = example_data("trixie")
    data["cluster"]["name"] = "lab-7"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    proc = pibuild("-c", "mine.yaml", "pigen", "dns-pm02", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = sourced(tmp_path / "out/config", "IMG_NAME", "RELEASE")
    assert got == {"IMG_NAME": "lab-7", "RELEASE": "trixie"}
    assert (tmp_path / "secrets/hacluster").exists()


def test_reexport_replaces_the_stage_and_refuses_a_foreign_config(tmp_path):
    e = exported_for(example_data(), "dns-pm01", tmp_path)
    stale = e.stage / "03-node-files/files/etc/stale"
    stale.write_text("from an older export\n")
    export.export_pigen(e.cluster, "dns-pm01", e.dest)
    assert not stale.exists()
    assert not [p for p in e.dest.iterdir() if p.name.startswith(".")], "no partial or old directories left"
    checkout = tmp_path / "pi-gen"
    checkout.mkdir()
    (checkout / "config").write_text("IMG_NAME=mine\n")
    with pytest.raises(export.UsageError, match="not written by pibuild"):
        export.export_pigen(e.cluster, "dns-pm01", checkout)
    assert (checkout / "config").read_text() == "IMG_NAME=mine\n"
    assert not (checkout / "stage-pibuild-dns-pm01").exists()


def test_a_login_user_pigen_refuses_is_reported(tmp_path):
    data = example_data()
    data["login"]["user"] = "_ops"
    cluster = config.from_dict(data, tmp_path / "cluster.yaml")
    with pytest.raises(export.PibuildError, match="FIRST_USER_NAME"):
        export.export_pigen(cluster, "dns-pm01", tmp_path / "out")


# ---- image tier: the chroot steps for real ----------------------------------------------------------------------

AMD64_PACKAGES = ["passwd", "sudo", "systemd", "systemd-sysv", "openssh-client"]


@pytest.fixture(scope="session")
def amd64_rootfs(tmp_path_factory) -> Path:
    """An amd64 bookworm root file system (cached as a tarball under $TMPDIR/pibuild-test-cache): the host's arch, so a
    plain chroot runs the steps. Stand-ins for what the cluster packages would bring: the hacluster account and
    the units 01-cluster-services enables and disables."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("needs root and mmdebstrap")
    cache = Path(tempfile.gettempdir()) / "pibuild-test-cache" / "pigen-amd64-bookworm.tar"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"partial-{os.getpid()}-{cache.name}")  # mmdebstrap picks the format by ".tar"
        subprocess.run(["mmdebstrap", "--variant=minbase", "--arch=amd64", f"--include={','.join(AMD64_PACKAGES)}",
                        "bookworm", str(partial), "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=900)
        os.replace(partial, cache)
    root = tmp_path_factory.mktemp("amd64") / "rootfs"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(cache), "-C", str(root)], check=True)
    subprocess.run(["chroot", str(root), "useradd", "--system", "--no-create-home", "hacluster"], check=True)
    units = root / "lib/systemd/system"
    for unit in ("corosync", "pacemaker", "pcsd", "named"):
        (units / f"{unit}.service").write_text(f"[Unit]\nDescription={unit}\n[Service]\nExecStart=/bin/true\n"
                                               "[Install]\nWantedBy=multi-user.target\n")
    return root


def copy_rootfs(src: Path, dst: Path) -> None:
    """cp -a, as pi-gen's copy_previous does with rsync -a: device nodes stay nodes (shutil.copytree would read
    /dev/full or /dev/zero as endless files and fill the disk)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def chroot_run(root: Path, script: bytes, env: dict[str, str]) -> None:
    proc = subprocess.run(["chroot", str(root), "/bin/bash", "-e", "-s"], input=script, capture_output=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})
    assert proc.returncode == 0, proc.stderr.decode()


def run_real_harness(e: Exported, work: Path) -> Path:
    """The harness with an on_chroot that chroots for real into work/stage/rootfs (copied from work/prev/rootfs);
    apt-get lines are skipped (the amd64 base stands in for the installed packages)."""
    harness = HARNESS.replace('\tbash -n "$n.sh"\n', '\tif ! grep -q "^apt-get " "$n.sh"; then\n'
                              '\t\tchroot "${ROOTFS_DIR}" /bin/bash -e < "$n.sh"\n\tfi\n')
    assert harness != HARNESS
    (work / "h.sh").write_text(harness)
    proc = subprocess.run(["bash", str(work / "h.sh"), str(e.dest / "config"), str(e.stage), str(work),
                           e.cluster.base.arch], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work / "stage/rootfs"


def shadow_fields(root: Path) -> dict[str, str]:
    return {f[0]: f[1] for f in (line.split(":") for line in (root / "etc/shadow").read_text().splitlines())}


@pytest.mark.image
@pytest.mark.parametrize("variant", ["login-keys-hash", "bookworm-pm01"])
def test_stage_for_real_gives_the_same_root_as_pibuild_node(variant, amd64_rootfs, tmp_path):
    make, node = VARIANTS[variant]
    e = exported_for(make(), node, tmp_path / "export")
    # pibuild node: stages.run_stages' way (packages already there: the base has them), then the node's files
    # and the hacluster hash as image.build_node writes them.
    ours = tmp_path / "pibuild/rootfs"
    copy_rootfs(amd64_rootfs, ours)
    env = stages.environment(e.cluster)
    for step in stages.steps():
        if step.kind == "run-chroot.sh":
            chroot_run(ours, step.path.read_bytes(), env)
        elif step.kind == "run.sh":
            subprocess.run(["bash", "-e", str(step.path)], cwd=step.substage, check=True,
                           env={**os.environ, **env, "ROOTFS_DIR": str(ours)})
    render.write_tree(render.render_node(e.cluster, node, e.password), ours)
    hacluster_hash = re.search(r"^hacluster:(\S+)$", (e.stage / "04-hacluster-password/00-run-chroot.sh")
                               .read_text(), re.M).group(1)
    image.set_password_hash(ours, "hacluster", hacluster_hash)

    # pi-gen: the harness with an on_chroot that chroots for real (no apt: the packages are in the base).
    work = tmp_path / "pigen"
    copy_rootfs(amd64_rootfs, work / "prev/rootfs")
    theirs = run_real_harness(e, work)

    # /etc/shadow: same password fields (the date of the last change may differ by the day the step ran)
    assert shadow_fields(theirs) == shadow_fields(ours)
    assert shadow_fields(theirs)["hacluster"] == hacluster_hash
    if e.cluster.login.password_hash:
        assert shadow_fields(theirs)["admin"] == e.cluster.login.password_hash
    else:
        assert shadow_fields(theirs)["admin"].startswith("!")
    keys = (theirs / "home/admin/.ssh/authorized_keys").read_text().splitlines()
    assert keys == list(e.cluster.login.ssh_authorized_keys)
    got, want = snapshot(theirs), snapshot(ours)
    skip = {"etc/shadow", "etc/shadow-"}
    assert sorted(set(got) - skip) == sorted(set(want) - skip)
    for path in sorted(set(want) - skip):
        if path.startswith(("var/log/", "var/cache/")):
            continue
        assert got[path] == want[path], path


@pytest.mark.image
@pytest.mark.parametrize("variant", ["login-keys-hash", "bookworm-pm01"])
def test_stage_over_pigens_own_first_user(variant, amd64_rootfs, tmp_path):
    """pi-gen's stage1 creates FIRST_USER_NAME with FIRST_USER_PASS (the config's random one): the login-user
    sub-stage keeps that account (no second one), gives it login.password_hash or locks it, and writes the keys."""
    make, node = VARIANTS[variant]
    e = exported_for(make(), node, tmp_path / "export")
    work = tmp_path / "pigen"
    copy_rootfs(amd64_rootfs, work / "prev/rootfs")
    cfg = sourced(e.dest / "config", "FIRST_USER_NAME", "FIRST_USER_PASS")
    chroot_run(work / "prev/rootfs", b'useradd --create-home --shell /bin/bash --uid 1000 "$FIRST_USER_NAME"\n'
               b'echo "$FIRST_USER_NAME:$FIRST_USER_PASS" | chpasswd\n', cfg)
    before = shadow_fields(work / "prev/rootfs")["admin"]
    assert before.startswith("$")
    theirs = run_real_harness(e, work)
    accounts = [line.split(":") for line in (theirs / "etc/passwd").read_text().splitlines()]
    assert [a[2] for a in accounts if a[0] == "admin"] == ["1000"]
    if e.cluster.login.password_hash:
        assert shadow_fields(theirs)["admin"] == e.cluster.login.password_hash
    else:
        assert shadow_fields(theirs)["admin"] == "!" + before  # locked: the random FIRST_USER_PASS opens nothing
        assert (theirs / "etc/sudoers.d/010_pibuild-nopasswd").is_file()
    keys = (theirs / "home/admin/.ssh/authorized_keys").read_text().splitlines()
    assert keys == list(e.cluster.login.ssh_authorized_keys)
