"""`pibuild lab`: the outage computation (unit), and the whole cluster in QEMU with failover drills (lab tier).

The lab tier builds a cluster's images, runs `lab up`, checks both nodes online and both VIPs answering from the
client, runs the drills (LAB_DRILLS), and checks that `lab down` leaves no namespace and no QEMU process. Which
architectures' labs run: LAB_ARCHES.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import run_pibuild as pibuild

from builder import config, lab, probe, qemu, resources
from builder.probe import Sample

# ---- unit: outages from synthetic samples --------------------------------------------------------------------


def series(vip: str, start: float, oks: str, step: float = 0.1) -> list[Sample]:
    """'1' a good answer, '0' a failed one, every `step` seconds from `start`."""
    return [Sample(round(start + i * step, 3), vip, c == "1") for i, c in enumerate(oks)]


def test_compare_seed_takes_the_seeds_settings_from_examples_seed_yaml():
    """--compare-seed drills with examples/seed.yaml's reaction keys (the seed's: monitor 10s, query 5 s, no
    reaction, token 3000 ms); the bundled example drills with pibuild's defaults, which differ in each."""
    seed = lab.seed_settings()
    pm = yaml.safe_load(resources.seed_config().read_text())["pacemaker"]
    assert seed == lab.Settings("seed", *(pm[key] for key in lab.REACTION_KEYS))
    assert seed == lab.Settings("seed", "10s", 5, False, 3000)
    example = lab.settings_of(config.load(resources.example_config()))
    assert all(getattr(example, key) != getattr(seed, key) for key in lab.REACTION_KEYS)


def test_no_failure_is_no_outage():
    s = series("a", 100.0, "1" * 30)
    o = probe.outage(s, "a", event=100.5)
    assert (o.outage_s, o.recovered, o.failback_s) == (0.0, True, 0.0)


def test_outage_runs_from_first_failure_to_first_good_answer():
    s = series("a", 100.0, "11111" + "0" * 25 + "1" * 10)   # fails at 100.5, good again at 103.0
    o = probe.outage(s, "a", event=100.2)
    assert o.outage_s == pytest.approx(2.5)
    assert o.recovered


def test_failures_before_the_event_do_not_count():
    s = series("a", 100.0, "000" + "1" * 10 + "00" + "1" * 5)
    o = probe.outage(s, "a", event=100.5)
    assert o.outage_s == pytest.approx(0.2)


def test_never_answering_again_is_not_recovered():
    s = series("a", 100.0, "111" + "0" * 20)
    o = probe.outage(s, "a", event=100.0)
    assert not o.recovered
    assert o.outage_s == pytest.approx(1.9)


def test_failback_outage_is_counted_apart():
    s = series("a", 100.0, "1" + "0" * 10 + "1" * 20 + "000" + "1" * 10)   # failover 1.0 s, failback 0.3 s
    o = probe.outage(s, "a", event=100.0, recovery=102.5)
    assert o.outage_s == pytest.approx(1.0)
    assert o.failback_s == pytest.approx(0.3)
    assert o.recovered


def test_vips_are_kept_apart():
    s = sorted(series("a", 100.0, "1" + "0" * 10 + "1" * 5) + series("b", 100.0, "1" * 16), key=lambda x: x.t)
    assert probe.outage(s, "a", 100.0).outage_s == pytest.approx(1.0)
    assert probe.outage(s, "b", 100.0).outage_s == 0.0


def test_probe_lines_round_trip_and_cut_lines_are_skipped():
    lines = ['{"t": 1.5, "vip": "a", "ok": true, "ms": 1.0}', '{"t": 1.0, "vip": "a", "ok": false, "ms": null}',
             '{"t": 2.0, "vip": "a", "o']
    assert probe.parse_lines(lines) == [Sample(1.0, "a", False), Sample(1.5, "a", True)]


def test_dns_query_and_answer_parsing():
    q = probe.query(0x1234, "localhost.")
    assert q[:2] == b"\x12\x34" and q.endswith(b"\x09localhost\x00\x00\x01\x00\x01")
    answer = bytearray(q)
    answer[2:4] = b"\x81\x80"      # response, recursion available, NOERROR
    answer[6:8] = b"\x00\x01"      # one answer record
    assert probe.answer_id(bytes(answer)) == (0x1234, True)
    answer[3] = 0x82               # SERVFAIL
    assert probe.answer_id(bytes(answer)) == (0x1234, False)


def test_crm_mon_parsing():
    xml = """<pacemaker-result><nodes><node name="n1" online="true"/><node name="n2" online="false"/></nodes>
    <resources><group id="g1"><resource id="vip1" active="true" failed="false"><node name="n1"/></resource>
    </group><resource id="vip2" active="false" failed="false"/></resources>
    <failures><failure op_key="m1_monitor_2000" node="n1"/></failures></pacemaker-result>"""
    state = lab.parse_crm_mon("noise before\n" + xml)
    assert state.online == ("n1",)
    assert state.where == {"vip1": ("n1",)}
    assert state.failed == ("m1_monitor_2000 on n1",)


def test_a_failure_after_the_failback_is_cleaned_up_again_and_reported(tmp_path, monkeypatch):
    """Manual failback: a monitor failure that appears after the drill's cleanup keeps its VIP away until someone
    cleans up again. The drill does, a bounded number of times, and names the failure in its row and its table."""
    from builder.lab import drills
    cluster = config.load(resources.example_config(), base_dir=tmp_path)
    assert cluster.pacemaker.failback == "manual"
    the_lab = lab.lab_for(cluster)
    names = [n.name for n in the_lab.nodes]
    home = {v.name: (v.prefer[0],) for v in cluster.vips}
    away = {**home, cluster.vips[1].name: (cluster.vips[1].prefer[1],)}
    failure = f"named2_monitor_3000 on {names[1]}"
    cleanups = []
    # Before the first cleanup: the drill's own failure; after it, a new one; after the second, healthy.
    states = {0: lab.ClusterState(tuple(names), away, (failure,)),
              1: lab.ClusterState(tuple(names), away, (failure,)),
              2: lab.ClusterState(tuple(names), home, ())}
    monkeypatch.setattr(drills, "LATE_FAILURE_GRACE_S", 0)
    monkeypatch.setattr(drills.time, "sleep", lambda s: None)
    monkeypatch.setattr(drills.Drill, "settled", lambda self, since: True)
    monkeypatch.setattr(drills.Drill, "state", lambda self, avoid=None: states[min(len(cleanups), 2)])
    monkeypatch.setattr(drills.Drill, "failback", lambda self, via=None: cleanups.append(via))
    d = drills.Drill(the_lab, {n: types.SimpleNamespace(name=n) for n in names}, tmp_path / "samples")
    assert d.heal(60, avoid=names[0]) == (True, [failure])
    assert cleanups == [names[1], names[1]]

    # A failure that keeps coming back is cleaned up LATE_CLEANUPS times, then the drill is not healthy.
    states[2] = states[1]
    cleanups.clear()
    monkeypatch.setattr(drills.time, "time", iter(range(0, 10_000, 1)).__next__)
    ok, late = d.heal(60, avoid=names[0])
    assert not ok and late == [failure] * drills.LATE_CLEANUPS

    rows = [{"scenario": "named-stop", "vip": v.address, "outage_s": 0.1, "recovered": True, "settings": "config",
             "failures_after_failback": [failure]} for v in cluster.vips]
    assert lab.table(rows, ["config"]).splitlines()[-1] == \
        f"after named-stop's failback (config), cleaned up again: {failure}"
    # formation-powercut heals the same way once the cluster formed, and names what it cleaned up.
    rows = [{"scenario": "formation-powercut-mark", "vip": v.address, "outage_s": 900.0, "recovered": True,
             "settings": "config", "failures_after_formation": [failure]} for v in cluster.vips]
    assert lab.table(rows, ["config"]).splitlines()[-1] == \
        f"after formation-powercut-mark's formation (config), cleaned up: {failure}"


def test_outage_table_side_by_side():
    rows = [{"scenario": "named-stop", "vip": "10.0.0.11", "outage_s": 1.2, "recovered": True, "settings": "config"},
            {"scenario": "named-stop", "vip": "10.0.0.11", "outage_s": 13.5, "recovered": True, "settings": "seed"}]
    text = lab.table(rows, ["config", "seed"])
    assert "1.2s" in text and "13.5s" in text


def test_lab_vm_is_detached_with_its_console_on_a_socket(tmp_path):
    """The lab asks the VM builder for a detached QEMU (no argv patching): the serial console on a unix socket,
    logged to the node's serial log, QMP, a pidfile, -daemonize; smoke's VM keeps its console on stdio."""
    node = lab.lab_for(config.load(resources.example_config(), base_dir=tmp_path)).nodes[0]
    boot = qemu.Boot("virt", "armhf", "vmlinuz-6.1.0-armmp", "initrd.img-6.1.0-armmp", None, "root=PARTUUID=x-02")
    detached = qemu.Vm(tmp_path / "x.img", node.dir, node.log, name=node.name, tap=node.tap, accel="tcg",
                       detached=qemu.Detached(serial=node.serial, qmp=node.qmp, pidfile=node.pidfile))
    foreground = qemu.Vm(tmp_path / "x.img", node.dir, node.log, name=node.name, tap=node.tap, accel="tcg")
    detached.boot = foreground.boot = boot
    argv, plain = detached.qemu_argv(), foreground.qemu_argv()
    chardev = argv[argv.index("-chardev") + 1]
    assert chardev == (f"socket,id=console,path={node.serial},server=on,wait=off,logfile={node.log},"
                       "logappend=on")
    assert argv[-5:] == ["-qmp", f"unix:{node.qmp},server=on,wait=off", "-pidfile", str(node.pidfile),
                         "-daemonize"]
    assert plain[plain.index("-chardev") + 1] == "stdio,id=console,signal=off"
    assert "-daemonize" not in plain and "-qmp" not in plain
    assert [a for a in argv if a != chardev][:-5] == [a for a in plain if not a.startswith("stdio,")]


def test_every_scenario_is_offered_and_knows_both_halves():
    assert lab.DEFAULT_SCENARIOS == ["named-stop", "named-freeze", "node-poweroff", "node-replace", "link-down"]
    moments = ["setup", "start", "auth", "push", "mark"]
    assert list(lab.SCENARIOS) == lab.DEFAULT_SCENARIOS + ["formation-powercut"] + [
        f"formation-powercut-{m}" for m in moments]
    for name, scenario in lab.SCENARIOS.items():
        assert scenario.name == name
        # Either both halves of "break, fail over, repair, fail back", or a course of its own.
        kind = type(scenario)
        halves = kind.event is not lab.Scenario.event and kind.recover is not lab.Scenario.recover
        assert halves or kind.run is not lab.Scenario.run, name


def test_rejoin_table_shows_the_new_cards_figures_and_what_was_left():
    row = {"scenario": "node-replace", "settings": "config", "node": "dns-pm01", "boot_s": 61.2, "rejoin_s": 95.0,
           "firstboot_done_s": 140.4, "vip_home_after_rejoin_s": None, "secrets_left_on_card": [],
           "rejoin_glibc_defaults_failed": 0, "rejoin_glibc_recommended_failed": 2,
           "rejoin_glibc_defaults_worst_s": 0.02, "rejoin_glibc_recommended_worst_s": 1.5}
    other = {"scenario": "named-stop", "settings": "config"}
    text = lab.rejoin_table([other, row, {**row, "vip": "second VIP's row, same figures"}])
    head, line = text.splitlines()
    assert "node-replace" in head and "dns-pm01" in line
    assert line.split()[2:6] == ["61s", "95s", "140s", "stayed"]
    assert line.split()[6:] == ["2", "1.50s", "none"]
    assert lab.rejoin_table([other]) == ""


# ---- lab tier: the whole cluster in QEMU ---------------------------------------------------------------------

EXAMPLE_IMAGES = ("clst-01-dns-pm01.img", "clst-01-dns-pm02.img")
ARM64_CONFIG = Path(__file__).resolve().parent / "configs" / "arm64.yaml"


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def qemu_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("qemu-system") and "/run/pibuild/lab/" in line]


@pytest.fixture(scope="session")
def example_images(tmp_path_factory) -> Path:
    """The bundled example's images: PIBUILD_LAB_IMAGES, else built with `pibuild all` (the cache makes it quick)."""
    given = os.environ.get("PIBUILD_LAB_IMAGES")
    if given:
        assert all((Path(given) / name).is_file() for name in EXAMPLE_IMAGES), given
        return Path(given)
    cwd = tmp_path_factory.mktemp("lab-build")
    proc = pibuild("all", "-o", "out", cwd=cwd, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd / "out"


def lab_config(cwd: Path, arch: str) -> str:
    """Write the lab's cluster.yaml into cwd; returns the cluster's name."""
    source = resources.example_config() if arch == "armhf" else ARM64_CONFIG
    data = yaml.safe_load(source.read_text())
    for key in lab.REACTION_KEYS:  # none in either config: the lab drills with pibuild's defaults
        data.get("pacemaker", {}).pop(key, None)
    (cwd / "cluster.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return data["cluster"]["name"]


# Both architectures of the Pis (issue 14): the bundled example (armhf, bookworm, booted with the LPAE emulation
# kernel) and the image tier's 64-bit cluster (arm64, trixie, its own kernel). One lab at a time: the fixture's
# instances run one after the other, each torn down before the next. CI's 90 minutes on two cores hold one lab
# beside three cold releases (issue 19): the arm64 one, as its trixie (pcs 0.12, Pacemaker 3.0) is the release whose
# formation differs most, while the armhf boot path (the emulation kernel) is the smoke tier's two armhf boots.
# PIBUILD_LAB_ARCHES=armhf,arm64 runs both labs (about 15 min more on a 2-core machine). Module scope: the last lab
# goes down once this module's tests are done, not at the session's end (two idle TCG guests running their monitors
# would slow every later tier, the smoke boots most).
LAB_ARCHES = ("armhf", "arm64")


def wanted_lab_arches() -> set[str]:
    return set(os.environ.get("PIBUILD_LAB_ARCHES", "arm64").split(","))


@pytest.fixture(scope="module", params=LAB_ARCHES)
def lab_up(request, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if request.param not in wanted_lab_arches():
        pytest.skip(f"the {request.param} lab runs with PIBUILD_LAB_ARCHES=armhf,arm64 (CI's budget holds the arm64 "
                    "lab only)")
    arch = request.param
    cwd = tmp_path_factory.mktemp(f"lab-{arch}")
    cluster = lab_config(cwd, arch)
    if arch == "armhf":
        images = request.getfixturevalue("example_images")
    else:
        built = pibuild("all", "-o", "out", cwd=cwd, timeout=3600)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        images = cwd / "out"
    pibuild("lab", "down", cwd=cwd, timeout=120)   # a lab left over by an interrupted run
    proc = pibuild("lab", "up", "--images", str(images), cwd=cwd, timeout=1800)
    try:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        yield cwd
    finally:
        down = pibuild("lab", "down", cwd=cwd, timeout=300)
        assert down.returncode == 0, down.stderr
        assert f"pibuild-{cluster}" not in namespaces()
        assert qemu_processes() == []
        assert not Path(f"/run/pibuild/lab/{cluster}").exists()
        if arch == "arm64":
            shutil.rmtree(images, ignore_errors=True)  # 2 x 1.6 GB


@pytest.mark.lab
def test_lab_up_forms_the_cluster_and_every_vip_answers(lab_up):
    proc = pibuild("lab", "status", cwd=lab_up, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "online: dns-pm01, dns-pm02" in proc.stdout
    for address in ("192.168.100.11", "192.168.100.12"):
        (line,) = [ln for ln in proc.stdout.splitlines() if f" {address}: on " in ln]
        assert "answers DNS" in line and "NOT" not in line


# Which drills each architecture's lab runs. Both run named-stop (the address moves while BIND still answers). A
# node's power loss: on armhf it boots the same card again (node-poweroff); on arm64 it gets a new card
# (node-replace), which measures the same failover (the outage and the glibc clients from the power loss until the
# node is powered on again) and then the rejoin. PIBUILD_LAB_EVERY_DRILL=1 runs every drill on every lab.
LAB_DRILLS = {"armhf": {"named-stop", "node-poweroff"}, "arm64": {"named-stop", "node-replace"}}
EVERY_DRILL = ("named-stop", "node-poweroff", "node-replace")


def drills_here(request) -> list[str]:
    arch = request.node.callspec.params["lab_up"]
    every = os.environ.get("PIBUILD_LAB_EVERY_DRILL") == "1"
    return [d for d in EVERY_DRILL if every or d in LAB_DRILLS[arch]]


def wants_drill(request, drill: str) -> None:
    if drill not in drills_here(request):
        pytest.skip(f"the {drill} drill runs on {', '.join(a for a in LAB_DRILLS if drill in LAB_DRILLS[a])} "
                    "(PIBUILD_LAB_EVERY_DRILL=1 runs it on every architecture)")


def assert_failover_clients(r: dict) -> None:
    """The lab's glibc clients (issue 16): no lookup failed, and none took longer than a working failover allows
    (CLIENT_CEILINGS; a power loss is a power loss whether the card comes back or is replaced)."""
    for client in ("defaults", "recommended"):
        assert r[f"glibc_{client}_lookups"] > 0 and r[f"glibc_{client}_failed"] == 0, r
    ceilings = CLIENT_CEILINGS["named-stop" if r["scenario"] == "named-stop" else "node-poweroff"]
    assert r["glibc_defaults_worst_s"] < ceilings[0] and r["glibc_recommended_worst_s"] < ceilings[1], r


@pytest.mark.lab
def test_failover_drills_recover(lab_up, request):
    scenarios = [d for d in drills_here(request) if d in ("named-stop", "node-poweroff")]
    proc = pibuild("lab", "drill", *[a for s in scenarios for a in ("--scenario", s)], "--json",
                   cwd=lab_up, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(proc.stdout)   # only the JSON: progress goes to stderr
    print(lab.table(rows, ["config"]))
    assert {(r["scenario"], r["vip"]) for r in rows} == {
        (s, v) for s in scenarios for v in ("192.168.100.11", "192.168.100.12")}
    for r in rows:
        assert r["recovered"], r
        assert set(r) >= {"scenario", "vip", "outage_s", "recovered"}
        assert_failover_clients(r)


REJOIN_CEILING_S = 300


@pytest.mark.lab
def test_node_replace_the_first_node_rejoins_by_itself(lab_up, request):
    """Issue 17: the first node (the initiator, whose card carries the password) gets a new card with the same
    image; its firstboot must rejoin the running cluster with no one's help while the other node serves."""
    wants_drill(request, "node-replace")
    proc = pibuild("lab", "drill", "--scenario", "node-replace", "--json", cwd=lab_up, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(proc.stdout)
    print(lab.rejoin_table(rows))
    assert {r["vip"] for r in rows} == {"192.168.100.11", "192.168.100.12"}
    for r in rows:
        assert r["node"] == "dns-pm01" and r["recovered"], r
        assert_failover_clients(r)   # the power loss, until the new card is powered on
        # Online within the new card's boot plus REJOIN_CEILING_S: issue 17's target is 3 min (measured 156 s on a
        # quiet host, README); the ceiling leaves a loaded CI host room, and a rejoin that waited on pcsd's 60 s
        # request timeouts (a pass failed, retried with 120 s) or on a human would still cross it.
        assert r["rejoin_s"] is not None and r["rejoin_s"] - r["boot_s"] <= REJOIN_CEILING_S, r
        assert r["firstboot_done_s"] is not None, r
        assert r["secrets_left_on_card"] == [], r   # the plaintext and the image's authkey copy gone again
        # A node's loss is not a failure of its VIP: under either failback policy it comes home once the new card
        # runs BIND (by a migration: the address is on a node throughout).
        assert r["vip_home_after_rejoin_s"] is not None, r
        for client in ("defaults", "recommended"):
            assert r[f"rejoin_glibc_{client}_lookups"] > 0 and r[f"rejoin_glibc_{client}_failed"] == 0, r


# Worst glibc lookup allowed per scenario: (glibc defaults, recommended options timeout:1 attempts:3). named-stop
# migrates the address while BIND still answers, so no lookup waits for a silent server; a gap in the move (the
# address on no node for a moment) costs the lookups that meet it glibc's whole 5 s timeout. node-poweroff: a
# lookup meets the dead node's silence once, one timeout, then the other VIP answers; twice that would mean the
# other VIP was silent too. The recommended options cap a silence at their 1 s timeout; without them, 5 s.
CLIENT_CEILINGS = {"named-stop": (2.5, 2.5), "node-poweroff": (5.0 + 2.5, 1.0 + 1.5)}


FAKE_DNS = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    d, a = s.recvfrom(512)
    s.sendto(d[:2] + b"\\x81\\x80\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00" + d[12:]
             + b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04\\x7f\\x00\\x00\\x01", a)
"""


@pytest.mark.netns
def test_prober_in_a_namespace_measures_a_dns_outage(tmp_path):
    """The lab's LAN and client for real: a DNS server on one VIP stops for a second; the other VIP never answers."""
    import time

    from builder import netns

    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = f"pibuild-test-{os.getpid()}"
    server_py = tmp_path / "fakedns.py"
    server_py.write_text(FAKE_DNS)
    netns.create(ns, ["tap0"], ["10.99.0.254", "10.99.0.11"], 24)
    server = prober = None
    try:
        serve = netns.exec_argv(ns, [sys.executable, str(server_py), "10.99.0.11"])
        server = subprocess.Popen(serve)
        time.sleep(0.5)
        prober = subprocess.Popen(netns.exec_argv(ns, [sys.executable, "-m", "builder.probe", "10.99.0.11",
                                                       "10.99.0.12"]), stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        event = time.time()
        server.kill()
        server.wait()
        time.sleep(1.0)
        server = subprocess.Popen(serve)
        time.sleep(1.5)
        prober.terminate()
        samples = probe.parse_lines(prober.communicate()[0].splitlines())
    finally:
        for proc in (server, prober):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        netns.delete(ns)
    assert not netns.exists(ns)
    assert 25 <= len([s for s in samples if s.vip == "10.99.0.11"]) <= 45   # 10 Hz for ~3.5 s
    up = probe.outage(samples, "10.99.0.11", event)
    assert up.recovered and 0.9 <= up.outage_s <= 2.5
    assert not probe.outage(samples, "10.99.0.12", event).recovered
