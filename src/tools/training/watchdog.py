"""A lost rank: when one process of a data-parallel run dies, the others stop, saying which it was
(msrun and MindSpore's ring do not). Rank 0 listens on a TCP port, every other rank holds a connection
to it, kernel keepalive finds a vanished machine: docs/scale-out.md, "A lost worker".
"""
import contextlib
import os
import socket
import sys
import threading
import time

from src.tools.base.cli import UserError

EXIT_STATUS = 1


def _keepalive(sock, timeout):
    """Kernel keepalive: a peer that stops answering is dropped after about ``timeout`` s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(timeout / 3))
    for name, value in (('TCP_KEEPIDLE', idle), ('TCP_KEEPINTVL', max(1, int(timeout / 9))), ('TCP_KEEPCNT', 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Watchdog:
    """Watches the ranks of one run; a context manager around it passes a clean end or an error on."""

    def __init__(self, rank, group_size, host, port, timeout=60.0, resume_hint=''):
        self.rank, self.group_size = rank, group_size
        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self.resume_hint = resume_hint
        self.position = 'start-up'
        self._lock = threading.Lock()          # sockets and state
        self._hold = threading.Lock()          # held while a checkpoint is written
        self._peers = {}                       # rank 0: {rank: socket}
        self._server = None
        self._hub = None                       # other ranks: the connection to rank 0
        self._closing = False                  # this rank is ending (cleanly or on its own error)
        self._done = set()                     # rank 0: ranks that said goodbye
        self._stopping = False

    @classmethod
    def for_launcher(cls, rank, group_size, timeout, port=0):
        """A started watchdog under msrun (MS_SCHED_HOST / MS_SCHED_PORT) for several ranks and
        ``timeout`` > 0; else None (mpirun: Open MPI aborts the job when a rank exits abnormally)."""
        host, scheduler_port = os.environ.get('MS_SCHED_HOST'), os.environ.get('MS_SCHED_PORT')
        if group_size < 2 or timeout <= 0 or not host or not scheduler_port:
            return None
        scheduler_port = int(scheduler_port)  # msrun's MASTER_PORT; ours: the one above (below for 65535)
        port = port or (scheduler_port + 1 if scheduler_port < 65535 else scheduler_port - 1)
        watchdog = cls(rank, group_size, host, port, timeout)
        watchdog.start()
        return watchdog

    def start(self, connect_within=None):
        """Rank 0 listens and waits (in the background) for the others; they connect to it."""
        connect_within = max(60.0, self.timeout) if connect_within is None else connect_within
        if self.rank == 0:
            try:
                self._server = socket.create_server((self.host, self.port))
            except OSError as error:
                raise UserError(f'watchdog: cannot listen on {self.host}:{self.port} ({error.strerror}); set '
                                f'watchdog_port to a free port (the same on every machine), or watchdog_timeout: 0 '
                                f'to run without it') from None
            self._thread(self._accept, connect_within)
        else:
            self._hub = self._connect(connect_within)
            _keepalive(self._hub, self.timeout)
            self._hub.sendall(f'hello {self.rank}\n'.encode())
            lines = self._lines(self._hub)
            line, ended = next(lines)  # rank 0's welcome: from here on it watches this rank
            if line != 'welcome':
                self._stop(f'rank 0 of {self.group_size} was lost ({ended or "it did not answer"})')
            self._thread(self._listen_to_hub, lines)
        return self

    def _thread(self, target, *args):
        threading.Thread(target=target, args=args, daemon=True, name=f'watchdog-{target.__name__}').start()

    def _connect(self, within):
        deadline = time.monotonic() + within
        while True:
            try:
                conn = socket.create_connection((self.host, self.port), timeout=5)
                conn.settimeout(None)  # block in recv: silence is for keepalive to judge
                return conn
            except OSError as error:
                if time.monotonic() > deadline:
                    self._stop(f'rank 0 was not reachable at {self.host}:{self.port} for {within:.0f} s '
                               f'({error.strerror or error}); is rank 0 running, and watchdog_port free?')
                time.sleep(0.2)

    def _accept(self, within):
        deadline = time.monotonic() + within
        self._server.settimeout(1.0)
        while len(self._peers) < self.group_size - 1 and not self._closing:
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, self.group_size)) - set(self._peers))
                self._lost(missing[0], f'it did not connect to the watchdog within {within:.0f} s')
                return
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            _keepalive(conn, self.timeout)
            self._thread(self._listen_to_peer, conn)

    @staticmethod
    def _lines(conn):
        """The lines ``conn`` sends, until it closes (then None, with why)."""
        buffer = b''
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError as error:  # keepalive gave up, or a reset
                yield None, f'its connection failed: {error.strerror or error}'
                return
            if not chunk:
                yield None, 'its connection closed: the process ended'
                return
            buffer += chunk
            while b'\n' in buffer:
                line, buffer = buffer.split(b'\n', 1)
                yield line.decode(errors='replace'), None

    def _listen_to_peer(self, conn):
        peer = None
        for line, ended in self._lines(conn):
            if line is None:
                if peer is not None and peer not in self._done:
                    self._lost(peer, ended)
                return
            word, _, rest = line.partition(' ')
            if word == 'hello':
                peer = int(rest)
                with self._lock:
                    self._peers[peer] = conn
                with contextlib.suppress(OSError):
                    conn.sendall(b'welcome\n')
            elif word == 'done':
                self._done.add(peer)
            elif word == 'error':
                self._lost(peer, f'it stopped on an error: {rest}')
                return

    def _listen_to_hub(self, lines):
        for line, ended in lines:
            if line is None:
                if not self._closing:
                    self._stop(f'rank 0 of {self.group_size} was lost ({ended})')
                return
            word, _, rest = line.partition(' ')
            if word == 'done':
                self._closing = True
            elif word == 'lost':
                rank, _, why = rest.partition(' ')
                self._stop(f'rank {rank} of {self.group_size} was lost ({why})')

    def _lost(self, rank, why):
        """Rank 0: tell the others which rank was lost, then stop this one."""
        if self._closing or self._stopping:
            return
        self._tell_peers(f'lost {rank} {why}', but=rank)
        self._stop(f'rank {rank} of {self.group_size} was lost ({why})')

    def _tell_peers(self, line, but=None):
        """Rank 0: send ``line`` to every connected rank but ``but``."""
        with self._lock:
            peers = [conn for peer, conn in self._peers.items() if peer != but]
        for conn in peers:
            with contextlib.suppress(OSError):
                conn.sendall(f'{line}\n'.encode())

    def _stop(self, what):
        if self._closing or self._stopping:
            return
        self._stopping = True
        message = (f'error: {what} at {self.position}; stopping rank {self.rank}. '
                   f'{self.resume_hint or "Resume with continues RUN_FOLDER"} (docs/scale-out.md)')
        print(message, file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        self._hold.acquire(timeout=600)  # let a checkpoint being written complete; never start another
        os._exit(EXIT_STATUS)  # the main thread may be blocked in a collective that will never return

    @contextlib.contextmanager
    def holding(self):
        """While inside, a stop waits (a checkpoint is being written)."""
        with self._hold:
            yield

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback):
        """A clean end says 'done'; an error is passed on in one line."""
        if kind is None:
            self._leave('done')  # after this rank's last collective
        elif not self._stopping:
            text = str(error).strip().splitlines()[0] if str(error).strip() else ''
            self._leave(f'error {kind.__name__}{": " + text if text else ""}')
        return False

    def _leave(self, word):
        """Say goodbye ('done', or 'error <first line>') and stop watching."""
        self._closing = True
        if self.rank == 0:
            kind, _, detail = word.partition(' ')
            self._tell_peers(f'lost 0 it stopped on an error: {detail}' if kind == 'error' else 'done')
            with contextlib.suppress(OSError):
                self._server.close()
        elif self._hub is not None:
            with contextlib.suppress(OSError):
                self._hub.sendall(f'{word}\n'.encode())
                self._hub.close()
