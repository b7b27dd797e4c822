"""Webhook calls cannot reach the service's own network: refusals happen before any
connection (a stub resolver and connector record what would have been done)."""

from __future__ import annotations

import socket

import pytest

from core.webhook_net import MAX_RESPONSE_BYTES, Refused, check_literal, networks, post, refusal
from tests.support.receiver import Receiver


class Recorder:
    """A resolver and a connector that record their calls and never connect anywhere."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.resolved: list[tuple[str, int]] = []
        self.connected: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append((host, port))
        return self.addresses

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        self.connected.append((address, port))
        raise AssertionError("a refused address was connected to")


REFUSED = ["127.0.0.2", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
           "169.254.10.10", "fd00:ec2::254", "fe80::1", "224.0.0.1", "0.0.0.0", "100.64.0.1",
           "::ffff:127.0.0.1", "::ffff:169.254.169.254", "fc00::1", "240.0.0.1"]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_addresses_are_never_connected(address: str) -> None:
    stub = Recorder([address])
    with pytest.raises(Refused):
        post("http://hooks.example.test/x", b"{}", {}, [], resolver=stub.resolve,
             connector=stub.connect)
    assert stub.resolved == [("hooks.example.test", 80)]
    assert stub.connected == []


def test_a_name_that_resolves_to_a_public_and_a_private_address_is_refused() -> None:
    stub = Recorder(["93.184.216.34", "10.0.0.5"])
    with pytest.raises(Refused, match="10.0.0.5"):
        post("https://hooks.example.test/x", b"{}", {}, [], resolver=stub.resolve,
             connector=stub.connect)
    assert stub.connected == []


def test_the_connection_goes_to_the_checked_address() -> None:
    """The name is resolved once; the connector gets that address, not the name."""
    receiver = Receiver().start()
    try:
        calls: list[tuple[str, int]] = []
        resolutions: list[str] = []

        def resolver(host: str, port: int) -> list[str]:
            resolutions.append(host)
            return ["127.0.0.1"]

        def connector(address: str, port: int, timeout: float) -> socket.socket:
            calls.append((address, port))
            return socket.create_connection((address, port), timeout=timeout)

        reply = post(f"http://receiver.test:{receiver.port}/hook?a=1", b'{"x":1}', {},
                     networks(["127.0.0.1/32"]), resolver=resolver, connector=connector)
        assert reply.status == 200
        assert resolutions == ["receiver.test"] and calls == [("127.0.0.1", receiver.port)]
        assert receiver.requests[0].path == "/hook?a=1"
        assert receiver.requests[0].headers["Host"] == f"receiver.test:{receiver.port}"
    finally:
        receiver.stop()


def test_the_allowlist_names_what_may_be_called() -> None:
    assert refusal("127.0.0.1", []) == "a loopback address"
    assert refusal("127.0.0.1", networks(["127.0.0.1"])) is None
    assert refusal("127.0.0.2", networks(["127.0.0.1"])) == "a loopback address"
    assert refusal("169.254.169.254", []) == "a cloud metadata address"
    assert refusal("93.184.216.34", []) is None


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x/",
                                 "http://user:pw@example.com/", "http:///nohost",
                                 "http://127.0.0.2/", "http://[::1]:8080/", "http://localhost/",
                                 "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
                                 "http://[::ffff:10.0.0.1]/", "http://0.0.0.0/"])
def test_refused_at_submission(url: str) -> None:
    with pytest.raises(Refused):
        check_literal(url, [])


def test_names_and_allowlisted_addresses_pass_the_submission_check() -> None:
    check_literal("https://hooks.example.com/x", [])
    check_literal("http://127.0.0.1:9/x", networks(["127.0.0.1"]))


def test_redirects_are_not_followed_and_bodies_are_cut() -> None:
    """A 302 is the answer (a failure for the sender), not a second request; a long body is
    read only up to the limit."""
    receiver = Receiver(status=302, reply=b"x" * 1_000_000).start()
    try:
        reply = post(receiver.url, b"{}", {}, networks(["127.0.0.1"]))
        assert reply.status == 302 and len(receiver.requests) == 1
        assert len(reply.body) == MAX_RESPONSE_BYTES
    finally:
        receiver.stop()


def test_a_slow_receiver_times_out() -> None:
    receiver = Receiver(delay_s=3.0).start()
    try:
        with pytest.raises(OSError):
            post(receiver.url, b"{}", {}, networks(["127.0.0.1"]), read_timeout=0.5)
    finally:
        receiver.stop()
