"""`pibuild clients` and the glibc client (builder.lookups).

What `pibuild clients` prints is checked by the real programs that read it (dnsmasq --test, kea-dhcp4 -t,
dhcpd -t, and glibc's resolver through the generated resolv.conf inside network namespaces), each also fed a broken
copy, so the check is shown able to fail.
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_pibuild as pibuild

from builder import clients, config, lookups, resources

REPO = Path(__file__).resolve().parents[1]
VIPS = ["192.168.100.11", "192.168.100.12"]


def cluster_from(tmp_path: Path, **changes) -> config.Cluster:
    data = yaml.safe_load(resources.example_config().read_text())
    data.update(changes)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config.load(path)


@pytest.fixture
def example(tmp_path) -> config.Cluster:
    return config.load(resources.example_config(), base_dir=tmp_path)


def _need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    return path


# ---- what it renders -----------------------------------------------------------------------------------------

def test_resolv_conf_lists_the_vips_in_order_with_the_recommended_options(example):
    text = clients.resolv_conf(example)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [f"nameserver {VIPS[0]}", f"nameserver {VIPS[1]}", "options timeout:1 attempts:3"]
    # The why, as comments right above the options line.
    comments = text.split("options ")[0].splitlines()[-2:]
    assert all(c.startswith("# ") and len(c) <= 120 for c in comments)
    assert "default 5" in " ".join(comments)


def test_resolv_conf_with_glibc_defaults_has_no_options_line(example):
    text = clients.resolv_conf(example, None)
    assert "options" not in text
    assert [ln for ln in text.splitlines() if ln.startswith("nameserver")] == [f"nameserver {v}" for v in VIPS]


def test_glibc_reads_three_nameservers_the_fourth_vip_is_a_comment(tmp_path):
    vips = [{"name": f"v{i}", "address": f"192.168.100.{10 + i}", "prefer": ["dns-pm01", "dns-pm02"]}
            for i in range(1, 5)]
    cluster = cluster_from(tmp_path, vips=vips)
    text = clients.resolv_conf(cluster)
    assert [ln for ln in text.splitlines() if ln.startswith("nameserver")] == [
        f"nameserver 192.168.100.{i}" for i in (11, 12, 13)]
    assert "# nameserver 192.168.100.14" in text
    # DHCP carries every VIP.
    assert "192.168.100.11,192.168.100.12,192.168.100.13,192.168.100.14" in clients.render(cluster, "dnsmasq")


def test_every_target_names_every_vip_in_order(example):
    for target, text in clients.render_all(example):
        positions = [text.find(v) for v in VIPS]
        assert -1 not in positions and positions == sorted(positions), target.key
    assert [t.key for t, _ in clients.render_all(example)] == list(clients.KEYS)


def test_networkmanager_sets_the_vips_only_and_the_options(example):
    text = clients.render(example, "networkmanager")
    (modify,) = [ln for ln in text.splitlines() if ln.startswith("nmcli connection modify")]
    assert f'ipv4.dns "{VIPS[0]},{VIPS[1]}"' in modify
    assert "ipv4.ignore-auto-dns yes" in modify
    assert 'ipv4.dns-options "timeout:1,attempts:3"' in modify


def test_networkd_and_resolved_files_parse_as_systemd_ini(example):
    for key, section in (("networkd", "Network"), ("resolved", "Resolve")):
        parser = configparser.ConfigParser(comment_prefixes=("#",), strict=True)
        parser.optionxform = str
        parser.read_string(clients.render(example, key))
        assert parser[section]["DNS"].split() == VIPS, key
    parser = configparser.ConfigParser(comment_prefixes=("#",))
    parser.optionxform = str
    parser.read_string(clients.render(example, "networkd"))
    assert parser["DHCPv4"]["UseDNS"] == "no"


def test_router_warns_against_a_forwarding_loop_only_when_bind_forwards_to_it(tmp_path, example):
    assert "loop" in clients.render(example, "router")   # the example forwards to its gateway
    data = yaml.safe_load(resources.example_config().read_text())
    other = cluster_from(tmp_path, network={**data["network"], "dns": ["9.9.9.9"]})
    text = clients.render(other, "router")
    assert "loop" not in text and "DNS server 1 (primary): 192.168.100.11" in text


# ---- checked by the programs that read it --------------------------------------------------------------------

def test_dnsmasq_accepts_its_line_and_refuses_a_broken_one(tmp_path, example):
    dnsmasq = _need("dnsmasq")
    good = tmp_path / "good.conf"
    good.write_text(clients.render(example, "dnsmasq"))
    r = subprocess.run([dnsmasq, "--test", f"--conf-file={good}"], capture_output=True, text=True)
    assert r.returncode == 0 and "syntax check OK" in r.stderr, r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(good.read_text().replace("option:dns-server", "option:dns-servr"))
    assert subprocess.run([dnsmasq, "--test", f"--conf-file={bad}"], capture_output=True).returncode != 0


def kea_config(snippet: str) -> str:
    """The snippet where the user puts it: in a subnet4 entry of an otherwise minimal kea-dhcp4.conf."""
    return ('{ "Dhcp4": { "subnet4": [ { "id": 1, "subnet": "192.168.100.0/24",\n'
            + snippet + "\n} ] } }\n")


def test_kea_accepts_its_option_data_and_refuses_a_broken_one(tmp_path, example):
    kea = _need("kea-dhcp4")
    snippet = clients.render(example, "kea")
    good = tmp_path / "kea-dhcp4.conf"
    good.write_text(kea_config(snippet))
    r = subprocess.run([kea, "-t", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(kea_config(snippet.replace(VIPS[1], "192.168.100.")))
    r = subprocess.run([kea, "-t", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout


def test_dhcpd_accepts_its_option_and_refuses_a_broken_one(tmp_path, example):
    dhcpd = _need("dhcpd")
    good = tmp_path / "dhcpd.conf"
    good.write_text(clients.render(example, "dhcpd"))
    r = subprocess.run([dhcpd, "-t", "-cf", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(good.read_text().replace(", ", " "))
    assert subprocess.run([dhcpd, "-t", "-cf", str(bad)], capture_output=True).returncode != 0


# ---- the command ---------------------------------------------------------------------------------------------

def test_clients_command_prints_every_target(tmp_path):
    proc = pibuild("clients", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for target in clients.TARGETS:
        assert f"==== {target.title} ({target.key})" in proc.stdout
    assert "nameserver 192.168.100.11\nnameserver 192.168.100.12\n" in proc.stdout
    assert "using the bundled example" in proc.stderr


def test_clients_only_prints_just_that_file(tmp_path, example):
    proc = pibuild("clients", "--only", "resolv.conf", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == clients.resolv_conf(example)


def test_clients_on_a_bad_config_exits_2_listing_the_problems_as_validate(tmp_path):
    data = yaml.safe_load(resources.example_config().read_text())
    data["vips"][1]["address"] = "192.168.100.1"    # a node's address
    data["nodes"][1]["model"] = "pi9"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    got = pibuild("-c", cfg, "clients", cwd=tmp_path)
    want = pibuild("-c", cfg, "validate", cwd=tmp_path)
    assert got.returncode == want.returncode == 2
    assert got.stdout == ""
    assert "Traceback" not in got.stderr
    problems = [ln for ln in got.stderr.splitlines() if ln.strip().startswith("- ")]
    assert len(problems) == 2 and problems == [ln for ln in want.stderr.splitlines() if ln.strip().startswith("- ")]
    assert any("vips[1].address" in p for p in problems) and any("nodes[1].model" in p for p in problems)


def test_clients_only_refuses_an_unknown_target(tmp_path):
    proc = pibuild("clients", "--only", "hosts", cwd=tmp_path)
    assert proc.returncode == 2 and "resolv.conf" in proc.stderr and "Traceback" not in proc.stderr


# ---- the glibc client's summary ------------------------------------------------------------------------------

def test_summary_counts_the_worst_the_slow_and_the_failed():
    rows = [lookups.Lookup(100.0, 0.01, True), lookups.Lookup(100.2, 5.01, True),
            lookups.Lookup(100.4, 1.2, False, "Temporary failure in name resolution"),
            lookups.Lookup(100.6, 0.02, True), lookups.Lookup(90.0, 9.0, False)]
    s = lookups.summarize(rows, since=100.0)
    assert (s.lookups, s.worst_s, s.slow, s.failed, s.worst_at) == (4, 5.01, 2, 1, 100.2)
    assert s.as_dict("glibc_") == {"glibc_lookups": 4, "glibc_worst_s": 5.01, "glibc_over_1s": 2,
                                   "glibc_failed": 1}
    assert lookups.summarize(rows, since=200.0) == lookups.Summary(0, 0.0, 0, 0, None)


def test_parse_lines_skips_a_line_cut_off():
    lines = [json.dumps({"t": 2.0, "s": 0.5, "ok": True, "error": None}), '{"t": 3.0, "s"',
             json.dumps({"t": 1.0, "s": 5.0, "ok": False, "error": "x"})]
    assert [x.t for x in lookups.parse_lines(lines)] == [1.0, 2.0]


# ---- glibc through the generated resolv.conf, in network namespaces ------------------------------------------

_numbers = itertools.count()
SERVERS = ("10.98.0.1", "10.98.0.2")


@dataclass
class DnsLan:
    """Two dnsmasq servers (each authoritative for localhost) in one namespace, the client in another, a veth
    pair between them: the client's packets cross a real link, as on a LAN."""

    server_ns: str
    client_ns: str
    procs: dict

    def start(self, address: str) -> None:
        self.procs[address] = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, _need("dnsmasq"), "--conf-file=/dev/null", "--keep-in-foreground",
             "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={address}", "--pid-file=",
             "--host-record=localhost,127.0.0.1,::1", "--log-facility=/dev/null"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(["ip", "netns", "exec", self.server_ns, "ss", "-Hlun", f"src {address}:53"],
                                 capture_output=True, text=True).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise AssertionError(f"dnsmasq on {address} did not listen")

    def stop(self, address: str) -> None:
        proc = self.procs.pop(address)
        proc.terminate()
        proc.wait(10)

    def sysctl(self, key: str, value: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.server_ns, "sysctl", "-qw", f"{key}={value}"], check=True)

    def drop(self, address: str) -> None:
        """Silence: queries to address vanish (a frozen server, a dead node whose address neighbours still know)."""
        subprocess.run(["ip", "netns", "exec", self.server_ns, "iptables", "-A", "INPUT", "-d", address, "-p", "udp",
                        "--dport", "53", "-j", "DROP"], check=True)

    def lookups(self, resolv_conf: Path, duration: float, interval: float = 0.2) -> list[lookups.Lookup]:
        out = subprocess.run(["ip", "netns", "exec", self.client_ns, sys.executable, "-m", "builder.lookups",
                              "--resolv-conf", str(resolv_conf), "--duration", str(duration),
                              "--interval", str(interval)],
                             capture_output=True, text=True, timeout=duration + 60,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        return lookups.parse_lines(out.stdout.splitlines())


@pytest.fixture
def dns_lan():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "iptables", "ss"):
        _need(tool)
    n = next(_numbers)
    lan = DnsLan(f"pibuild-dnss-{os.getpid()}-{n}", f"pibuild-dnsc-{os.getpid()}-{n}", {})
    made = []
    try:
        for ns in (lan.server_ns, lan.client_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", lan.server_ns, "link", "add", "srv0", "type", "veth", "peer", "name", "cli0",
                        "netns", lan.client_ns], check=True)
        for address in SERVERS:
            subprocess.run(["ip", "-n", lan.server_ns, "addr", "add", f"{address}/24", "dev", "srv0"], check=True)
        subprocess.run(["ip", "-n", lan.client_ns, "addr", "add", "10.98.0.254/24", "dev", "cli0"], check=True)
        for ns, dev in ((lan.server_ns, "srv0"), (lan.client_ns, "cli0")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        for address in SERVERS:
            lan.start(address)
        yield lan
    finally:
        for proc in lan.procs.values():
            proc.kill()
            proc.wait()
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def generated(tmp_path: Path, vips: tuple[str, ...] = SERVERS) -> tuple[Path, Path]:
    """`pibuild clients`'s resolv.conf (recommended options) and the same without options (glibc's defaults),
    for a cluster whose VIPs are `vips`."""
    data = yaml.safe_load(resources.example_config().read_text())
    data["network"] = {**data["network"], "gateway": "10.98.0.254", "dns": ["10.98.0.254"]}
    data["nodes"] = [{**n, "address": f"10.98.0.{101 + i}"} for i, n in enumerate(data["nodes"])]
    data["vips"] = [{**v, "address": a} for v, a in zip(data["vips"], vips, strict=True)]
    data["dns"] = {"allow_recursion": ["10.98.0.0/24"]}
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    cluster = config.load(cfg)
    recommended, defaults = tmp_path / f"resolv.recommended.{vips[0]}", tmp_path / f"resolv.defaults.{vips[0]}"
    recommended.write_text(clients.resolv_conf(cluster))
    defaults.write_text(clients.resolv_conf(cluster, None))
    assert "options timeout:1 attempts:3" in recommended.read_text() and "options" not in defaults.read_text()
    return recommended, defaults


@pytest.fixture
def resolv_confs(tmp_path):
    return generated(tmp_path)


@pytest.mark.netns
def test_glibc_through_the_generated_resolv_conf(dns_lan, resolv_confs):
    recommended, defaults = resolv_confs
    # Both answer: every lookup answered at once (and the host's /etc/hosts was not asked: see the drop below).
    healthy = lookups.summarize(dns_lan.lookups(recommended, 1.0))
    assert healthy.lookups >= 4 and healthy.failed == 0 and healthy.worst_s < 0.5, healthy

    # The first nameserver silent: glibc waits `timeout` for it on every lookup, then the second answers.
    dns_lan.drop(SERVERS[0])
    with_options = lookups.summarize(dns_lan.lookups(recommended, 1.0))
    assert with_options.failed == 0 and 0.9 <= with_options.worst_s <= 1.6, with_options
    glibc_defaults = lookups.summarize(dns_lan.lookups(defaults, 0.5))
    assert glibc_defaults.failed == 0 and 4.9 <= glibc_defaults.worst_s <= 6.0, glibc_defaults
    assert glibc_defaults.slow == glibc_defaults.lookups


@pytest.mark.netns
def test_glibc_falls_to_the_second_at_once_when_the_first_refuses(dns_lan, resolv_confs):
    recommended, defaults = resolv_confs
    dns_lan.sysctl("net.ipv4.icmp_ratelimit", "0")   # every refusal sent (the next test: what the limit does)
    dns_lan.stop(SERVERS[0])   # its port closed: ICMP port unreachable, which glibc takes as "next server"
    for conf in (defaults, recommended):
        s = lookups.summarize(dns_lan.lookups(conf, 1.0))
        assert s.lookups >= 4 and s.failed == 0 and s.worst_s < 0.5, (conf.name, s)
    dns_lan.stop(SERVERS[1])   # nobody left: every lookup fails, and says so at once
    s = lookups.summarize(dns_lan.lookups(defaults, 0.6))
    assert s.lookups >= 2 and s.failed == s.lookups and s.worst_s < 0.5, s


@pytest.mark.netns
def test_the_kernels_icmp_rate_limit_turns_a_busy_clients_refusals_into_timeouts(dns_lan, resolv_confs):
    """Linux sends one ICMP error a second to each peer (net.ipv4.icmp_ratelimit, a burst of 6): a client asking
    a closed port more often than that (two queries a lookup, A and AAAA) meets silence, so a lookup waits the
    whole timeout. What a stopped BIND whose address stays costs a busy client."""
    recommended, defaults = resolv_confs
    dns_lan.stop(SERVERS[0])
    rows = dns_lan.lookups(defaults, 2.0)   # 5 lookups a second
    assert all(x.ok for x in rows) and all(x.s < 0.5 for x in rows[:3]), rows   # the burst
    assert any(4.9 <= x.s <= 6.0 for x in rows), rows
    s = lookups.summarize(dns_lan.lookups(recommended, 2.0))   # the bucket is empty now: silence costs 1 s
    assert s.failed == 0 and 0.9 <= s.worst_s <= 1.6, s


@pytest.mark.netns
def test_an_address_nobody_holds_costs_glibc_the_arp_timeout(dns_lan, tmp_path):
    """Nobody answers ARP for the first nameserver (a VIP that is on no node, not in the client's ARP cache): the
    kernel gives up after its three ARP probes, about 3 s, and only then tells glibc "host unreachable"."""
    recommended, defaults = generated(tmp_path, ("10.98.0.3", SERVERS[1]))
    s = lookups.summarize(dns_lan.lookups(defaults, 0.3))
    assert s.failed == 0 and 2.5 <= s.worst_s <= 3.6, s
    s = lookups.summarize(dns_lan.lookups(recommended, 0.3))
    assert s.failed == 0 and 0.9 <= s.worst_s <= 1.6, s


def test_figures_per_client_for_a_window(tmp_path):
    files = {}
    for name, durations in (("defaults", [0.01, 5.02, 0.01]), ("recommended", [0.01, 1.01, 0.01])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"t": 10.0 + i, "s": s, "ok": True, "error": None}) + "\n"
                                       for i, s in enumerate(durations)))
    got = lookups.figures(files, 11.0, 12.0)
    assert got == {"glibc_defaults_lookups": 1, "glibc_defaults_worst_s": 5.02, "glibc_defaults_over_1s": 1,
                   "glibc_defaults_failed": 0, "glibc_recommended_lookups": 1, "glibc_recommended_worst_s": 1.01,
                   "glibc_recommended_over_1s": 1, "glibc_recommended_failed": 0}


def test_client_table_one_line_per_scenario_and_settings():
    row = {"scenario": "named-stop", "settings": "config", "glibc_defaults_worst_s": 5.01,
           "glibc_defaults_over_1s": 3, "glibc_defaults_failed": 0, "glibc_recommended_worst_s": 1.02,
           "glibc_recommended_over_1s": 1, "glibc_recommended_failed": 2}
    rows = [{**row, "vip": "a"}, {**row, "vip": "b"}, {**row, "vip": "a", "settings": "seed"}]
    lines = lookups.client_table(rows).splitlines()
    assert len(lines) == 3
    assert lines[1].split() == ["named-stop", "config", "5.01", "s", "3", "0", "1.02", "s", "1", "2"]
