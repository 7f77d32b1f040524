"""ocf:pibuild:named2, the monitor-only BIND agent (overlays/common/usr/lib/ocf/resource.d/pibuild/named2).

The netns tests start a real BIND inside a network namespace of their own (its own loopback, so nothing on the host
is disturbed or in the way) and run the agent there as Pacemaker would: OCF_ROOT, OCF_RESKEY_* and HA_RSCTMP in a
temporary directory. The other tests only need resource-agents' shell functions.
"""

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "overlays/common/usr/lib/ocf/resource.d/pibuild/named2"
OCF_ROOT = Path("/usr/lib/ocf")
DTD_DIR = Path("/usr/share/resource-agents")  # ra-api-1.dtd; ocf-tester validates meta-data from here too
PATH = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"

OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_UNIMPLEMENTED = 0, 1, 3
OCF_ERR_INSTALLED, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING = 5, 6, 7

# The seed's resource parameters (monitor-named1/2), plus the pid file of the test's BIND.
SEED_PARAMS = {"monitor_request": "localhost", "named_user": "bind", "named": "/usr/sbin/named"}
QUERY_TIMEOUT = 2  # seconds, for the frozen-BIND cases
MARGIN = 1.0  # seconds allowed on top of the query timeout (agent start-up, ps, getent...)

_ns_numbers = itertools.count()


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t, path=PATH) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def _need_ocf() -> None:
    if not (OCF_ROOT / "lib/heartbeat/ocf-shellfuncs").is_file():
        pytest.skip(f"resource-agents not installed (no {OCF_ROOT}/lib/heartbeat/ocf-shellfuncs)")


def _need_bind_user() -> None:
    try:
        pwd.getpwnam("bind")
    except KeyError:
        pytest.skip("no user 'bind' (install bind9)")


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def agent_command(action: str, rsctmp: Path, ns: str | None = None, **params: str) -> tuple[list[str], dict]:
    """The agent run as Pacemaker runs it: parameters as OCF_RESKEY_*, state under HA_RSCTMP; inside `ns` if given."""
    env = {
        "PATH": PATH,
        "OCF_ROOT": str(OCF_ROOT),
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "0",
        "OCF_RESOURCE_INSTANCE": "mon",
        "HA_RSCTMP": str(rsctmp),
        "OCF_RESKEY_CRM_meta_timeout": "20000",
        "OCF_RESKEY_CRM_meta_interval": "10000",  # a recurring monitor, not a probe
    }
    env.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    cmd = [str(AGENT), action]
    return (["ip", "netns", "exec", ns, *cmd] if ns else cmd), env


def run_agent(action: str, rsctmp: Path, ns: str | None = None, **params: str) -> Result:
    cmd, env = agent_command(action, rsctmp, ns, **params)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


NAMED_CONF = """\
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    listen-on port 53 {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ localhost; }};
    allow-query {{ localhost; }};
    dnssec-validation no;
}};
controls {{ }};
zone "localhost" {{ type primary; file "{d}/db.localhost"; }};
zone "pibuild.test" {{ type primary; file "{d}/db.pibuild.test"; }};
"""

ZONE = """\
$TTL 60
@   IN SOA localhost. root.localhost. 1 3600 600 86400 60
@   IN NS  localhost.
{records}
"""


@dataclass
class Bind:
    ns: str
    workdir: Path
    rsctmp: Path
    pidfile: Path
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def params(self, **params: str) -> dict:
        # The stop marker under the test's own directory: never the host's /run/pibuild.
        return {**SEED_PARAMS, "named_pidfile": str(self.pidfile),
                "stop_marker": str(self.workdir / "named-stopped"), **params}

    def agent(self, action: str, **params: str) -> Result:
        return run_agent(action, self.rsctmp, self.ns, **self.params(**params))

    def answers(self) -> bool:
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns, "dig", "-r", "+short", "+time=1", "+tries=1", "@127.0.0.1", "localhost"],
            capture_output=True,
            text=True,
            check=False,
        )
        return p.returncode == 0 and p.stdout.strip() == "127.0.0.1"

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def log(self) -> str:
        return (self.workdir / "named.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def bind_ns():
    """A BIND running as user bind on 127.0.0.1 in a fresh network namespace; all of it removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, BIND on port 53)")
    _need("ip", "named", "dig")
    _need_ocf()
    _need_bind_user()

    ns = f"pibuild-named2-{os.getpid()}-{next(_ns_numbers)}"
    # Not pytest's tmp_path: its parents are 0700, and named, once it is user bind, must reach its directory.
    workdir = Path(tempfile.mkdtemp(prefix="pibuild-named2-"))
    ns_created = False
    proc = None
    try:
        workdir.chmod(0o755)
        shutil.chown(workdir, "bind", "bind")  # named writes its pid file and managed keys here as bind
        rsctmp = workdir / "rsctmp"
        rsctmp.mkdir()
        (workdir / "named.conf").write_text(NAMED_CONF.format(d=workdir))
        (workdir / "db.localhost").write_text(ZONE.format(records="@   IN A   127.0.0.1"))
        (workdir / "db.pibuild.test").write_text(ZONE.format(records="www IN A   192.0.2.53"))

        subprocess.run(["ip", "netns", "add", ns], check=True)
        ns_created = True
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with open(workdir / "named.log", "wb") as log:
            # -g: foreground, log to stderr. `ip netns exec` execs named in place, so proc.pid is named's pid.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "named", "-g", "-u", "bind", "-c", str(workdir / "named.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        bind = Bind(ns, workdir, rsctmp, workdir / "named.pid", proc)
        deadline = time.monotonic() + 20
        while not (bind.pidfile.exists() and bind.answers()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"BIND did not come up in {ns}:\n{bind.log()}")
            time.sleep(0.2)
        assert bind.pidfile.read_text().strip() == str(proc.pid), "the pid file should name the named we started"
        yield bind
    finally:
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):  # a stopped named cannot act on SIGTERM
                proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if ns_created:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


# -- the file itself ---------------------------------------------------------------------------------------------------


def test_agent_is_an_executable_posix_sh_script():
    assert AGENT.read_text().startswith("#!/bin/sh\n")
    assert AGENT.stat().st_mode & 0o777 == 0o755, "Pacemaker and ocf-tester want the agent mode 0755"
    subprocess.run(["sh", "-n", str(AGENT)], check=True)


def test_agent_passes_shellcheck():
    _need("shellcheck")
    p = subprocess.run(["shellcheck", "-s", "sh", str(AGENT)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout


def test_meta_data_is_valid_against_ra_api_dtd(tmp_path):
    _need_ocf()
    _need("xmllint")
    if not (DTD_DIR / "ra-api-1.dtd").is_file():
        pytest.skip(f"no {DTD_DIR}/ra-api-1.dtd")
    r = run_agent("meta-data", tmp_path)
    assert r.rc == OCF_SUCCESS, r.stderr
    lint = subprocess.run(
        ["xmllint", "--noout", "--valid", "-"], input=r.stdout, cwd=DTD_DIR, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stderr

    root = ET.fromstring(r.stdout)
    assert root.get("name") == "named2"
    defaults = {p.get("name"): p.find("content").get("default") for p in root.iter("parameter")}
    assert defaults == {
        "named": "/usr/sbin/named",
        "named_user": "bind",
        "named_pidfile": "/run/named/named.pid",
        "monitor_request": "localhost",
        "monitor_ip": "127.0.0.1",
        "monitor_response": "",
        "query_timeout": "5",
        # What pibuild's named.service drop-in and /usr/lib/pibuild/named-stopped use.
        "stop_marker": "/run/pibuild/named-stopped",
    }
    actions = {a.get("name") for a in root.iter("action")}
    assert {"start", "stop", "monitor", "reload", "meta-data", "validate-all"} <= actions


# -- without BIND ------------------------------------------------------------------------------------------------------


def test_validate_all_answers_with_ocf_codes(tmp_path):
    _need_ocf()
    _need("named", "dig")
    _need_bind_user()
    ok = {**SEED_PARAMS, "named": shutil.which("named", path=PATH)}
    assert run_agent("validate-all", tmp_path, **ok).rc == OCF_SUCCESS
    cases = [
        ({"named": "/nonexistent/named"}, OCF_ERR_INSTALLED),
        ({"named_user": "no-such-user-pibuild"}, OCF_ERR_INSTALLED),
        ({"query_timeout": "soon"}, OCF_ERR_CONFIGURED),
        ({"query_timeout": "0"}, OCF_ERR_CONFIGURED),
        ({"monitor_ip": ""}, OCF_ERR_CONFIGURED),
        ({"monitor_request": ""}, OCF_ERR_CONFIGURED),
        ({"named_pidfile": ""}, OCF_ERR_CONFIGURED),
    ]
    for bad, code in cases:
        r = run_agent("validate-all", tmp_path, **{**ok, **bad})
        assert r.rc == code, (bad, r.stderr)
        assert "ocf-exit-reason:" in r.stderr, (bad, r.stderr)


def test_probe_and_monitor_say_not_running_before_start(tmp_path):
    """The node not holding the group must not see the resource active, even where BIND is not installed."""
    _need_ocf()
    probe = run_agent("monitor", tmp_path, CRM_meta_interval="0", named="/nonexistent/named", named_user="nobody-x")
    assert probe.rc == OCF_NOT_RUNNING, probe.stderr
    assert "ocf-exit-reason:" not in probe.stderr  # a stopped resource is no error on a probe
    monitor = run_agent("monitor", tmp_path)
    assert monitor.rc == OCF_NOT_RUNNING, monitor.stderr


def test_reload_succeeds_and_unknown_actions_are_unimplemented(tmp_path):
    _need_ocf()
    assert run_agent("reload", tmp_path).rc == OCF_SUCCESS
    assert run_agent("notify", tmp_path).rc == OCF_ERR_UNIMPLEMENTED
    assert run_agent("frobnicate", tmp_path).rc == OCF_ERR_UNIMPLEMENTED


def test_started_here_names_the_resources_of_the_state_files_here(tmp_path):
    """named-hooks.sh asks the agent, as a systemd hook outside Pacemaker, which resources it started on this node:
    the state files' names stay the agent's own."""
    _need_ocf()
    for name in ("named2-mon.state", "named2-vip-b.state", "IPaddr2-x.state"):
        (tmp_path / name).touch()

    def started_here() -> list[str]:
        env = {"PATH": PATH, "OCF_ROOT": str(OCF_ROOT), "HA_RSCTMP": str(tmp_path)}
        p = subprocess.run([str(AGENT), "started-here"], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == OCF_SUCCESS, p.stderr
        return p.stdout.split()

    assert started_here() == ["mon", "vip-b"]
    assert run_agent("stop", tmp_path).rc == OCF_SUCCESS  # resource "mon"
    assert started_here() == ["vip-b"]
    hooks = (AGENT.parents[3] / "pibuild/named-hooks.sh").read_text()
    assert "/usr/lib/ocf/resource.d/pibuild/named2 started-here" in hooks and "named2-" not in hooks


# -- against a real BIND in a network namespace ------------------------------------------------------------------------


@pytest.mark.netns
def test_ocf_tester_passes_with_seed_parameters(bind_ns):
    _need("ocf-tester", "xmllint", "su")
    # A copy (same mode) in the namespace's 0755 work directory: ocf-tester runs meta-data as nobody, who may not be
    # able to reach the checkout.
    agent = bind_ns.workdir / "named2"
    shutil.copy2(AGENT, agent)
    options = [arg for k, v in bind_ns.params().items() for arg in ("-o", f"{k}={v}")]
    env = {"PATH": PATH, "OCF_ROOT": str(OCF_ROOT), "HA_RSCTMP": str(bind_ns.rsctmp)}
    p = subprocess.run(
        ["ip", "netns", "exec", bind_ns.ns, "ocf-tester", "-n", "mon", *options, str(agent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "passed all tests" in p.stdout
    assert bind_ns.proc.poll() is None, "ocf-tester's start/stop must leave BIND running"


@pytest.mark.netns
def test_start_stop_only_record_state(bind_ns):
    state = bind_ns.rsctmp / "named2-mon.state"
    assert bind_ns.agent("monitor", CRM_meta_interval="0").rc == OCF_NOT_RUNNING  # probe before start
    for _ in range(2):  # start is idempotent
        r = bind_ns.agent("start")
        assert r.rc == OCF_SUCCESS, r.stderr
        assert state.exists()
    assert bind_ns.agent("monitor").rc == OCF_SUCCESS
    assert bind_ns.agent("monitor", CRM_meta_interval="0").rc == OCF_SUCCESS  # probe of a started resource
    for _ in range(2):  # stop is idempotent
        r = bind_ns.agent("stop")
        assert r.rc == OCF_SUCCESS, r.stderr
        assert not state.exists()
        assert bind_ns.agent("monitor").rc == OCF_NOT_RUNNING
    assert bind_ns.proc.poll() is None and bind_ns.answers(), "start/stop must not touch BIND"


@pytest.mark.netns
def test_monitor_checks_the_answer_and_the_user(bind_ns):
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    assert bind_ns.agent("monitor", monitor_response="127.0.0.1").rc == OCF_SUCCESS
    assert bind_ns.agent("monitor", monitor_request="www.pibuild.test", monitor_response="192.0.2.53").rc == 0

    wrong = bind_ns.agent("monitor", monitor_response="127.0.0.2")
    assert wrong.rc == OCF_ERR_GENERIC and "expected 127.0.0.2" in wrong.stderr, wrong.stderr
    nxdomain = bind_ns.agent("monitor", monitor_request="nope.pibuild.test")  # an empty answer is no answer
    assert nxdomain.rc == OCF_ERR_GENERIC, nxdomain.stderr
    elsewhere = bind_ns.agent("monitor", monitor_ip="127.0.0.2", query_timeout="1")  # nobody listens there
    assert elsewhere.rc == OCF_ERR_GENERIC, elsewhere.stderr
    root = bind_ns.agent("monitor", named_user="root")  # BIND answers, but not as the expected user
    assert root.rc == OCF_ERR_GENERIC and "running as root" in root.stderr, root.stderr


@pytest.mark.netns
def test_frozen_bind_fails_after_two_unanswered_queries(bind_ns):
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    bind_ns.signal(signal.SIGSTOP)  # alive, but answering nothing
    r = bind_ns.agent("monitor", query_timeout=str(QUERY_TIMEOUT))
    print(f"frozen BIND: monitor rc={r.rc} after {r.seconds:.2f}s (query_timeout={QUERY_TIMEOUT}s)")
    assert r.rc == OCF_ERR_GENERIC, r.stderr
    assert 2 * QUERY_TIMEOUT - 0.2 < r.seconds < 2 * QUERY_TIMEOUT + MARGIN, r.seconds
    assert "No answer from 127.0.0.1" in r.stderr, r.stderr

    bind_ns.signal(signal.SIGCONT)
    assert bind_ns.agent("monitor").rc == OCF_SUCCESS  # thawed, it passes again


def _address_moved(bind: Bind, seconds_ago: float) -> None:
    """What ocf:pibuild:vip leaves as it adds or removes an address (its HA_RSCTMP is the agents' shared one)."""
    marker = bind.rsctmp / "address-changed"
    marker.touch()
    when = time.time() - seconds_ago
    os.utime(marker, (when, when))


@pytest.mark.netns
def test_right_after_an_address_moved_an_unanswered_query_is_asked_again(bind_ns):
    """BIND answers nothing while it rescans its interfaces, which it does whenever an address arrives or leaves;
    on loaded emulated nodes that outlasted both queries and failed over a working BIND. Within 30 s of a move
    the monitor asks until its operation's time is nearly spent, and passes once BIND answers."""
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    _address_moved(bind_ns, seconds_ago=1)
    bind_ns.signal(signal.SIGSTOP)  # stands in for the rescan: alive, answering nothing
    cmd, env = agent_command("monitor", bind_ns.rsctmp, bind_ns.ns, **bind_ns.params(query_timeout=str(QUERY_TIMEOUT)))
    t0 = time.monotonic()
    monitor = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2 * QUERY_TIMEOUT + 2)  # past where two unanswered queries fail
        assert monitor.poll() is None, "the monitor must still be asking"
        bind_ns.signal(signal.SIGCONT)
        _, err = monitor.communicate(timeout=30)
        print(f"monitor returned {monitor.returncode} after {time.monotonic() - t0:.2f}s (BIND thawed after "
              f"{2 * QUERY_TIMEOUT + 2}s)")
        assert monitor.returncode == OCF_SUCCESS, err
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()


@pytest.mark.netns
def test_after_an_address_moved_a_frozen_bind_still_fails_within_the_operation(bind_ns):
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    _address_moved(bind_ns, seconds_ago=0)
    bind_ns.signal(signal.SIGSTOP)
    r = bind_ns.agent("monitor", query_timeout=str(QUERY_TIMEOUT), CRM_meta_timeout="12000")
    print(f"frozen BIND right after a move, 12s monitor: rc={r.rc} after {r.seconds:.2f}s")
    assert r.rc == OCF_ERR_GENERIC and "No answer from 127.0.0.1" in r.stderr, r.stderr
    assert 2 * QUERY_TIMEOUT + 1 < r.seconds < 12, r.seconds


@pytest.mark.netns
def test_a_move_long_ago_changes_nothing(bind_ns):
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    _address_moved(bind_ns, seconds_ago=60)
    bind_ns.signal(signal.SIGSTOP)
    r = bind_ns.agent("monitor", query_timeout=str(QUERY_TIMEOUT))
    assert r.rc == OCF_ERR_GENERIC, r.stderr
    assert r.seconds < 2 * QUERY_TIMEOUT + MARGIN, r.seconds


@pytest.mark.netns
def test_query_timeout_is_cut_to_fit_the_monitor_timeout(bind_ns):
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    bind_ns.signal(signal.SIGSTOP)
    r = bind_ns.agent("monitor", query_timeout="30", CRM_meta_timeout="6000")  # a third of 6s: 2s per query
    print(f"frozen BIND, 6s monitor: monitor rc={r.rc} after {r.seconds:.2f}s")
    assert r.rc == OCF_ERR_GENERIC, r.stderr
    assert r.seconds < 4 + MARGIN, r.seconds


@pytest.mark.netns
def test_killed_bind_fails_and_stop_still_works(bind_ns):
    assert bind_ns.agent("start").rc == OCF_SUCCESS
    bind_ns.signal(signal.SIGKILL)
    bind_ns.proc.wait(timeout=10)  # the pid file stays behind, stale
    r = bind_ns.agent("monitor")
    assert r.rc == OCF_ERR_GENERIC, r.stderr
    assert "No named running as bind" in r.stderr, r.stderr
    assert bind_ns.agent("stop").rc == OCF_SUCCESS
    assert bind_ns.agent("monitor").rc == OCF_NOT_RUNNING


@pytest.mark.netns
def test_start_waits_for_bind_to_answer(bind_ns):
    """At boot named.service may still be loading zones: start waits for an answer, within its timeout."""
    bind_ns.signal(signal.SIGSTOP)
    cmd, env = agent_command("start", bind_ns.rsctmp, bind_ns.ns, **bind_ns.params(query_timeout="1"))
    t0 = time.monotonic()
    starting = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        assert starting.poll() is None, "start must not succeed while BIND does not answer"
        bind_ns.signal(signal.SIGCONT)
        _, err = starting.communicate(timeout=30)
        assert starting.returncode == OCF_SUCCESS, err
        print(f"start returned 0 after {time.monotonic() - t0:.2f}s (BIND thawed after 2.5s)")
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()

    bind_ns.signal(signal.SIGKILL)
    bind_ns.proc.wait(timeout=10)
    r = bind_ns.agent("start", query_timeout="1", CRM_meta_timeout="6000")
    assert r.rc == OCF_ERR_GENERIC, r.stderr
    assert r.seconds < 6, r.seconds  # gave up inside the start timeout


@pytest.mark.netns
def test_start_fails_at_once_after_a_deliberate_stop(bind_ns):
    """pibuild's ExecStopPost leaves the stop marker: start does not wait out its timeout for a BIND that systemd
    stopped (it did, 20 s, before the floating address could move on)."""
    bind_ns.signal(signal.SIGKILL)
    bind_ns.proc.wait(timeout=10)
    marker = bind_ns.workdir / "named-stopped"
    marker.touch()
    r = bind_ns.agent("start", CRM_meta_timeout="20000")
    assert r.rc == OCF_ERR_GENERIC and "was stopped" in r.stderr, r.stderr
    assert r.seconds < 3, r.seconds
    assert not (bind_ns.rsctmp / "named2-mon.state").exists()
    # Without the marker (a boot: /run is empty) start keeps waiting for BIND, as before.
    marker.unlink()
    r = bind_ns.agent("start", query_timeout="1", CRM_meta_timeout="6000")
    assert r.rc == OCF_ERR_GENERIC and r.seconds >= 2, (r.rc, r.seconds)
