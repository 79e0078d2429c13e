"""The waits classifier on /proc text captured from real processes (Linux
6.18, x86_64; ``proc_samples.json``: forked Python processes blocked in
recvfrom on TCP and unix sockets, poll on a TCP/IPv6 socket, accept4, flock,
clock_nanosleep, and one running)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import endpoint_key as normalise_endpoint
from gateway.observe.waits import (
    Context,
    Endpoint,
    SocketInfo,
    Wait,
    WorkerSample,
    classify,
    describe,
    parse_net_tcp,
    parse_net_unix,
    parse_pollfds,
    parse_stat_state,
    parse_syscall,
    socket_inode,
    summarise,
)

SAMPLES = json.loads((Path(__file__).parent / "proc_samples.json").read_text())


def worker(name: str, pid: int = 100) -> WorkerSample:
    s = SAMPLES[name]
    polled = tuple(parse_pollfds(bytes.fromhex(s["pollfds"]))) if "pollfds" in s else ()
    return WorkerSample(pid, parse_stat_state(s["stat"]), parse_syscall(s["syscall"]), s["wchan"],
                        {int(fd): link for fd, link in s["fds"].items()}, polled)


def context(**kw) -> Context:
    sockets = {**parse_net_tcp(SAMPLES["net_tcp"]), **parse_net_tcp(SAMPLES["net_tcp6"]),
               **parse_net_unix(SAMPLES["net_unix"])}
    return Context(sockets=sockets, **kw)


def test_parse_syscall_forms():
    assert parse_syscall("45 0x5 0x7fde557ecda0 0x1 0x0 0x0 0x0 0x7ffc097dc868 0x7fde55d28929\n").number == 45
    assert parse_syscall(SAMPLES["recv_tcp"]["syscall"]).args[0] == 5
    assert parse_syscall("running\n").running
    blocked = parse_syscall("-1 0x7ffc097dc868 0x7fde55d28929")
    assert blocked is not None and blocked.number is None and not blocked.running
    assert parse_syscall("") is None and parse_syscall("garbage 0x1") is None


def test_parse_stat_state_with_parentheses_in_the_name():
    assert parse_stat_state(SAMPLES["cpu"]["stat"]) == "R"
    assert parse_stat_state("42 (php-fpm: pool (www)) D 1 2 3") == "D"
    assert parse_stat_state("") == ""


def test_parse_net_tcp_ipv4_and_ipv6():
    tcp = parse_net_tcp(SAMPLES["net_tcp"])
    assert tcp[5620321].listening and tcp[5620321].local == "127.0.0.1:46543"
    assert tcp[5620323] == SocketInfo("tcp", "127.0.0.1:46902", "127.0.0.1:46543")
    tcp6 = parse_net_tcp(SAMPLES["net_tcp6"])
    assert tcp6[5620325].peer == "[::1]:55405"
    only = parse_net_tcp(SAMPLES["net_tcp"], wanted={5620323})
    assert list(only) == [5620323]


def test_parse_net_unix_named_and_unnamed():
    unix = parse_net_unix(SAMPLES["net_unix"])
    assert unix[5620327].listening and unix[5620327].local == "/tmp/diag-sample.sock"
    assert unix[5620329].local == "/tmp/diag-sample.sock"  # accepted: its listener's path
    assert unix[5620328].local == ""  # the client


def test_pollfds_and_socket_links():
    assert parse_pollfds(bytes.fromhex(SAMPLES["poll_tcp6"]["pollfds"])) == [7]
    assert parse_pollfds(bytes.fromhex("ffffffff01000000" "0300000001000000")) == [3]
    assert socket_inode("socket:[5620323]") == 5620323 and socket_inode("/tmp/x") is None


def test_recv_on_a_database_port_is_database():
    ctx = context(endpoints={})
    # the sample's peer port is ephemeral: "socket", unless configured
    assert classify(worker("recv_tcp"), ctx) == Wait("socket", "127.0.0.1:46543")
    ctx = context(endpoints={"127.0.0.1:46543": Endpoint("primary db", "database")})
    assert classify(worker("recv_tcp"), ctx) == Wait("database", "127.0.0.1:46543", "primary db")


def test_well_known_ports():
    base = worker("recv_tcp")
    for port, kind in ((3306, "database"), (5432, "database"), (6379, "cache"), (11211, "cache"), (443, "http"),
                       (80, "http"), (9000, "socket")):
        sockets = {5620323: SocketInfo("tcp", "10.0.0.2:40000", f"10.0.0.5:{port}")}
        assert classify(base, Context(sockets=sockets)) == Wait(kind, f"10.0.0.5:{port}")


def test_poll_reads_the_fds_from_the_pollfd_array():
    ctx = context(endpoints={"[::1]:55405": Endpoint("api", "http")})
    assert classify(worker("poll_tcp6"), ctx) == Wait("http", "[::1]:55405", "api")


def test_the_gateways_fastcgi_connection_is_idle():
    ctx = context(fastcgi=frozenset({"/tmp/diag-sample.sock"}))
    assert classify(worker("accept"), ctx).kind == "idle"
    # a worker reading from the accepted end of php-fpm's listen socket waits for the gateway
    w = worker("recv_unix")
    w = WorkerSample(w.pid, w.state, parse_syscall("45 0xc 0x0 0x1 0x0 0x0 0x0 0x0 0x0"), w.wchan, w.fds)
    assert classify(w, ctx).kind == "idle"


def test_unnamed_unix_socket_is_a_socket():
    assert classify(worker("recv_unix"), context()) == Wait("socket", "a unix socket")


def test_locks_sleep_cpu_disk():
    assert classify(worker("flock"), context()) == Wait("lock", "/tmp/diag-sample.lock")
    assert classify(worker("sleep"), context()) == Wait("lock", "sleep")
    assert classify(worker("cpu"), context()) == Wait("cpu")
    fsync = WorkerSample(1, "S", parse_syscall("74 0xd 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), "", {13: "/var/www/data.db"})
    assert classify(fsync, context()) == Wait("disk", "/var/www/data.db")
    in_d = WorkerSample(1, "D", parse_syscall("1 0xd 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), "", {13: "/srv/log"})
    assert classify(in_d, context()) == Wait("disk", "/srv/log")
    futex = WorkerSample(1, "S", parse_syscall("202 0x1 0x80 0x0 0x0 0x0 0x0 0x0 0x0"), "futex_wait", {})
    assert classify(futex, context()) == Wait("lock", "futex")


def test_unreadable_is_unknown():
    w = WorkerSample(7, error="cannot read /proc/7/syscall: permission denied")
    assert classify(w, context()) == Wait("unknown", "cannot read /proc/7/syscall: permission denied")


def test_summary_and_reason_name_the_targets():
    waits = {1: Wait("database", "127.0.0.1:3306"), 2: Wait("database", "127.0.0.1:3306"),
             3: Wait("database", "127.0.0.1:3306"), 4: Wait("http", "93.184.216.34:443"), 5: Wait("idle")}
    frames = {1: "mysqli_query from wp-includes/class-wpdb.php", 2: "mysqli_query from wp-includes/class-wpdb.php",
              4: "curl_exec in plugins/x/api.php"}
    s = summarise(waits, 5, frames)
    assert s.counts == {"database": 3, "cache": 0, "http": 1, "socket": 0, "disk": 0, "lock": 0, "cpu": 0}
    assert describe(s) == ("4/5 workers busy, 3 of them waiting on the database at 127.0.0.1:3306 (mysqli_query "
                           "from wp-includes/class-wpdb.php), 1 on external HTTP to 93.184.216.34:443 (curl_exec in "
                           "plugins/x/api.php)")
    named = summarise({1: Wait("database", "10.0.0.5:3306", "primary db")}, 1)
    assert describe(named) == "1/1 workers busy, 1 of them waiting on the database at 10.0.0.5:3306 (primary db)"
    assert describe(summarise({1: Wait("lock", "sleep"), 2: Wait("cpu")}, 2)) == (
        "2/2 workers busy, 1 of them sleeping, 1 running on CPU")
    assert describe(summarise({1: Wait("unknown", "no permission")}, 1, errors=["no permission"])) == (
        "1/1 workers busy, 1 unknown (no permission)")


@pytest.mark.parametrize(("given", "key"), [("10.0.0.5:3306", "10.0.0.5:3306"), ("[::1]:6379", "[::1]:6379"),
                                            ("[0:0::1]:6379", "[::1]:6379"), ("unix:/run/mysqld.sock",
                                                                              "unix:/run/mysqld.sock")])
def test_endpoint_keys(given, key):
    assert normalise_endpoint(given) == key


@pytest.mark.parametrize("bad", ["db:3306", "10.0.0.5", "10.0.0.5:70000", "unix:", "300.1.1.1:1"])
def test_bad_endpoint_keys(bad):
    with pytest.raises(ValueError):
        normalise_endpoint(bad)


def test_a_task_in_d_that_the_kernel_calls_running_is_disk():
    # /proc/PID/syscall says "running" when the task changed state while it was read
    w = WorkerSample(1, "D", parse_syscall("running"), "0", {})
    assert classify(w, context()) == Wait("disk", "")
    s = summarise({1: Wait("disk", ""), 2: Wait("disk", "/srv/log"), 3: Wait("disk", "")}, 3)
    assert describe(s) == "3/3 workers busy, 3 of them waiting on disk I/O to /srv/log"
    assert describe(summarise({1: Wait("disk", "")}, 1)) == "1/1 workers busy, 1 of them waiting on disk I/O"
