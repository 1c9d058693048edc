"""The channel guard between a kernel's ZMQ sockets and our client, with real libzmq sockets:
what libzmq alone would buffer (a message of many frames) is dropped before our side holds it."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest
import zmq

from sandbox_kernel.launch.channel_guard import HIGH_WATER, MAX_FRAMES, ChannelGuard

pytestmark = pytest.mark.integration

MiB = 2**20


@pytest.fixture
def pubsub():
    """A PUB socket standing in for the kernel, a SUB socket reaching it through a guard with
    a 2 MiB message limit; yields (send, receive_all, guard)."""
    kernel_dir = tempfile.mkdtemp()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{kernel_dir}/k-1")
    guard = ChannelGuard(f"{kernel_dir}/k", {"iopub": (1, 2 * MiB)})
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 4
    sub.connect(f"ipc://{guard.ip}-1")
    sub.subscribe(b"")
    while True:  # the subscription must have reached the publisher through the guard
        pub.send_multipart([b"t", b"ping"])
        if sub.poll(50):
            sub.recv_multipart()
            break

    def receive_all(until: bytes) -> list[list[bytes]]:
        got = []
        while sub.poll(10_000):
            got.append(sub.recv_multipart())
            if got[-1][-1] == until:
                return got
        raise AssertionError(f"{until!r} never arrived; got {[len(m) for m in got]}")

    yield pub.send_multipart, receive_all, guard
    sub.close(0)
    pub.close(0)
    guard.close()
    ctx.term()
    assert not os.path.exists(guard.dir)


def test_messages_within_the_limits_pass_through_unchanged(pubsub):
    send, receive_all, guard = pubsub
    messages = [[b"t", b"x" * n, b"y"] for n in (0, 1, 255, 256, 70_000, 2 * MiB - 3)]
    for m in messages:
        send(m)
    send([b"t", b"end"])
    assert receive_all(b"end")[:-1] == messages and guard.take_drops() == []


def test_too_many_frames_or_bytes_are_dropped_and_reported_and_later_messages_arrive(pubsub):
    send, receive_all, guard = pubsub
    frame = b"x" * MiB
    send([frame] * 300, copy=False)  # 300 MiB that libzmq alone would buffer whole
    send([b"t"] * (MAX_FRAMES + 1))
    send([b"t", b"z" * (3 * MiB)])  # one frame over the limit
    send([b"t", b"after"])
    got = receive_all(b"after")
    assert got == [[b"t", b"after"]]
    drops = guard.take_drops()
    assert [(d.reason, d.size >= 2 * MiB or d.reason.startswith("more")) for d in drops] == [
        (f"more than {MAX_FRAMES} frames", True), (f"more than {MAX_FRAMES} frames", True), (f"over {2 * MiB} bytes", True)]


def test_a_client_that_does_not_read_holds_back_the_kernel_not_our_memory(pubsub):
    """While our side does not read, the guard stops reading from the kernel: what it holds
    stays bounded (the publisher drops what does not fit, on its side)."""
    send, receive_all, guard = pubsub
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            send([b"t", b"f" * 60_000])
            time.sleep(0)

    thread = threading.Thread(target=flood)
    thread.start()
    time.sleep(2)
    held = sum(len(link.client.out) + sum(map(len, link.message)) for link in list(guard._links))
    stop.set()
    thread.join()
    assert 0 < held <= HIGH_WATER + 2 * MiB + 256 * 1024
