"""A bounded relay between a sandboxed kernel's ZMQ sockets and our client's.

libzmq receives a whole multipart message before the application sees any of it, so a kernel
controls how much memory our client's ZMQ I/O thread allocates. ``ZMQ_MAXMSGSIZE`` does not
bound that: measured here, it limits each *frame*, so 500 frames of 1 MiB with a 2 MiB limit
still grew the receiver by 490 MB; and a frame over the limit makes libzmq drop the connection
and not reconnect, losing every later message. Receive high-water marks count whole messages,
whatever their size.

So our client never connects to the kernel's sockets directly. For each channel it connects
to a Unix socket of this guard (a private 0700 dir), and the guard connects to the kernel's.
Bytes from our side pass through untouched; bytes from the kernel are parsed at the ZMTP 3
framing level only (64-byte greeting, then ``flags, size, body`` frames) and a message is
passed on only once complete and within the channel's limits (total bytes, frame count).
A message over them is skipped without being buffered and recorded as a drop, so our side
holds at most one message per channel in the guard and what its ZMQ socket queues
(``RCVHWM`` messages, each within the limit). Forwarding stops while our side is not reading,
which pushes the backlog back into the kernel's sandbox (its own memory cap), where the
kernel's PUB socket drops what does not fit.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field

from .janitor import JANITOR

__all__ = ["ChannelGuard", "Drop"]

GREETING = 64  # ZMTP 3.x: signature (10), version (2), mechanism (20), as-server (1), filler (31)
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
MAX_COMMAND = 64 * 1024  # handshake commands (READY with its properties) are tiny
MAX_FRAMES = 64  # a Jupyter message: routing ids, delimiter, signature, 4 JSON parts, a few buffers
CHUNK = 256 * 1024
CONNECT_TIMEOUT = 2.0  # seconds; the client's ZMQ socket reconnects after a failed attempt
HIGH_WATER = 1 << 20  # stop reading from one side while this much waits for the other


@dataclass(frozen=True)
class Drop:
    channel: str
    size: int  # bytes of the message seen before it was dropped (at least the limit)
    reason: str


@dataclass
class _Side:
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)  # waiting to be written to this side


class _Link:
    """One client connection and its kernel connection; parses the kernel -> client stream."""

    def __init__(self, channel: str, client: socket.socket, kernel: socket.socket, limit: int):
        self.channel, self.limit = channel, limit
        self.client, self.kernel = _Side(client), _Side(kernel)
        self.greeting = GREETING
        self.header = bytearray()  # the frame header being read (2 or 9 bytes)
        self.body_left = 0  # bytes of the current frame body still to come
        self.frame_more = self.frame_command = False
        self.message: list[bytes] = []  # complete frames (header + body) of the current message
        self.message_bytes = self.frames = 0
        self.dropping = False  # the current message went over the limits: skip to its end

    def feed(self, data: memoryview) -> list[Drop]:
        """Consume bytes from the kernel; complete messages go to ``client.out``."""
        drops: list[Drop] = []
        while data:
            if self.greeting:
                n = min(self.greeting, len(data))
                chunk = bytes(data[:n])
                if self.greeting == GREETING and chunk[:1] != b"\xff":
                    raise _ProtocolError("not a ZMTP 3 greeting")
                self.client.out += chunk
                self.greeting -= n
                data = data[n:]
            elif self.body_left:
                n = min(self.body_left, len(data))
                if self.frame_command:
                    self.client.out += data[:n]
                elif not self.dropping:
                    self.message.append(bytes(data[:n]))
                self.body_left -= n
                data = data[n:]
                if not self.body_left:
                    drops += self._frame_done()
            else:
                need = 9 if self.header and self.header[0] & LONG else 2
                n = min(need - len(self.header), len(data))
                self.header += data[:n]
                data = data[n:]
                if len(self.header) == 2 and self.header[0] & LONG:
                    continue  # a long frame: 7 more size bytes
                if len(self.header) == need:
                    drops += self._frame_started()
        return drops

    def _frame_started(self) -> list[Drop]:
        flags, header = self.header[0], bytes(self.header)
        self.header = bytearray()
        if flags & ~(MORE | LONG | COMMAND):
            raise _ProtocolError(f"bad frame flags {flags:#x}")
        size = int.from_bytes(header[1:], "big")
        self.frame_more, self.frame_command, self.body_left = bool(flags & MORE), bool(flags & COMMAND), size
        if self.frame_command:
            if size > MAX_COMMAND or self.message or self.dropping:
                raise _ProtocolError(f"a {size}-byte ZMTP command")
            self.client.out += header
        else:
            self.frames += 1
            self.message_bytes += size
            if self.message_bytes > self.limit or self.frames > MAX_FRAMES:
                self.dropping, self.message = True, []  # skip the rest; never buffer it
            else:
                self.message.append(header)
        return self._frame_done() if not size else []

    def _frame_done(self) -> list[Drop]:
        if self.frame_command or self.frame_more:
            return []
        drops = []
        if self.dropping:
            reason = f"more than {MAX_FRAMES} frames" if self.frames > MAX_FRAMES else f"over {self.limit} bytes"
            drops.append(Drop(self.channel, self.message_bytes, reason))
        else:
            for part in self.message:
                self.client.out += part
        self.message, self.message_bytes, self.frames, self.dropping = [], 0, 0, False
        return drops


class _ProtocolError(Exception):
    pass


class ChannelGuard:
    """Relay the kernel's ``ipc`` channels at ``kernel_ip-<port>`` through ``self.ip-<port>``.

    ``limits``: channel name -> (port, largest message accepted from the kernel, in bytes)."""

    def __init__(self, kernel_ip: str, limits: dict[str, tuple[int, int]]):
        self.dir = tempfile.mkdtemp(prefix="sandbox-kernel-guard-")  # 0700: only we connect
        self._janitor = JANITOR.watch(paths=[self.dir])  # removes it even if we are killed
        self.ip = os.path.join(self.dir, "k")
        self._drops: list[Drop] = []
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._links: set[_Link] = set()
        self._closing = False
        try:
            for channel, (port, limit) in limits.items():
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(f"{self.ip}-{port}")
                listener.listen(16)
                listener.setblocking(False)
                self._sel.register(listener, selectors.EVENT_READ, (channel, f"{kernel_ip}-{port}", limit))
        except BaseException:
            self._close_all()
            raise
        self._thread = threading.Thread(target=self._run, name="sandbox-kernel-channel-guard", daemon=True)
        self._thread.start()

    def take_drops(self) -> list[Drop]:
        """Messages dropped since the last call (thread-safe)."""
        with self._lock:
            drops, self._drops = self._drops, []
        return drops

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._close_all()

    # ------------------------------------------------------------------ relay thread

    def _run(self) -> None:
        while not self._closing:
            for key, events in self._sel.select():
                if key.fileobj is self._wake_r:
                    return
                if isinstance(key.data[0], _Link):
                    link, side = key.data
                    if link in self._links:
                        self._service(link, side, events)
                else:
                    self._accept(key.fileobj, *key.data)

    def _accept(self, listener: socket.socket, channel: str, kernel_path: str, limit: int) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        kernel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        kernel.settimeout(CONNECT_TIMEOUT)  # a kernel whose listen queue is full must not stall every channel
        try:
            kernel.connect(kernel_path)
        except OSError:
            client.close()
            kernel.close()
            return
        client.setblocking(False)
        kernel.setblocking(False)
        link = _Link(channel, client, kernel, limit)
        self._links.add(link)
        self._sel.register(client, selectors.EVENT_READ, (link, "client"))
        self._sel.register(kernel, selectors.EVENT_READ, (link, "kernel"))

    def _service(self, link: _Link, side: str, events: int) -> None:
        here, there = (link.client, link.kernel) if side == "client" else (link.kernel, link.client)
        try:
            if events & selectors.EVENT_WRITE and here.out:
                sent = here.sock.send(here.out)
                del here.out[:sent]
            if events & selectors.EVENT_READ and len(there.out) < HIGH_WATER:
                data = here.sock.recv(CHUNK)
                if not data:
                    raise ConnectionResetError
                if side == "kernel":
                    drops = link.feed(memoryview(data))
                    if drops:
                        with self._lock:
                            self._drops += drops
                else:
                    there.out += data
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, _ProtocolError) as e:
            if isinstance(e, _ProtocolError):
                with self._lock:
                    self._drops.append(Drop(link.channel, 0, f"connection closed: {e}"))
            self._drop_link(link)
            return
        self._update(link)

    def _update(self, link: _Link) -> None:
        """Poll a side for reading only while the other side has room, for writing only while
        something waits for it (and not at all when neither: selectors take no empty mask)."""
        registered = self._sel.get_map()
        for here, there, name in ((link.client, link.kernel, "client"), (link.kernel, link.client, "kernel")):
            mask = (selectors.EVENT_READ if len(there.out) < HIGH_WATER else 0) | (selectors.EVENT_WRITE if here.out else 0)
            if mask and here.sock in registered:
                self._sel.modify(here.sock, mask, (link, name))
            elif mask:
                self._sel.register(here.sock, mask, (link, name))
            elif here.sock in registered:
                self._sel.unregister(here.sock)

    def _drop_link(self, link: _Link) -> None:
        self._links.discard(link)
        for s in (link.client.sock, link.kernel.sock):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _close_all(self) -> None:
        for link in list(self._links):
            self._drop_link(link)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()
        self._wake_w.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        JANITOR.forget(self._janitor)
