"""A real IMAP server for the mailbox door's tests: Debian's dovecot (`dovecot-imapd`; .ci/run
installs it) on 127.0.0.1 and a free port, with its own configuration, state, mail and passwd-file
user in a temporary directory: no system path is read or written, and nothing listens outside
loopback. Run as the current user with `-c <conf>`; when that user is root (a CI container),
dovecot's login processes must not be root, so they run as the package's `dovenull`/`dovecot`
users and the mail is stored as `nobody`."""
from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

DOVECOT = os.environ.get("CRMBRIDGE_TEST_DOVECOT", "/usr/sbin/dovecot")
USER, PASSWORD = "sales@cake.example.ua", "imap-test-pass"

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
listen = 127.0.0.1
protocols = imap
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = {uid}
mail_location = maildir:{dir}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Dovecot:
    dir: Path
    port: int
    process: subprocess.Popen | None = None

    def start(self) -> "Dovecot":
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                self.session().logout()
                return self
            except (OSError, imaplib.IMAP4.error):
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        log = (self.dir / "dovecot.log").read_text() if (self.dir / "dovecot.log").exists() else ""
        self.stop()
        raise RuntimeError(f"dovecot did not answer on 127.0.0.1:{self.port}: {log[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def session(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=5)
        imap.login(USER, PASSWORD)
        return imap

    def deliver(self, message: bytes, folder: str = "INBOX") -> int:
        """Put a message into the mailbox (IMAP APPEND, as a mail client or delivery agent would)."""
        imap = self.session()
        try:
            typ, data = imap.append(folder, None, None, message)
            assert typ == "OK", data
            return int(data[0].split(b"]")[0].split()[-1])   # [APPENDUID <validity> <uid>]
        finally:
            imap.logout()

    def expunge_all(self) -> None:
        imap = self.session()
        try:
            imap.select("INBOX")
            imap.store("1:*", "+FLAGS", "\\Deleted")
            imap.expunge()
        finally:
            imap.logout()


def start_dovecot() -> Dovecot:
    if not Path(DOVECOT).exists():   # .ci/run installs it; a bare machine needs apt-get install dovecot-imapd
        pytest.fail(f"{DOVECOT} not found: apt-get install -y dovecot-imapd")
    base = Path(tempfile.mkdtemp(prefix="crmbridge-dovecot-"))
    base.chmod(0o755)   # the login processes (another user when run as root) reach the sockets in it
    for sub in ("run", "state", "mail", "home"):
        (base / sub).mkdir()
    if os.geteuid() == 0:
        login_user, internal_user, internal_group = "dovenull", "dovecot", "dovecot"
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        for sub in ("mail", "home"):
            os.chown(base / sub, uid, gid)
    else:
        login_user = internal_user = pwd.getpwuid(os.getuid()).pw_name
        internal_group = grp.getgrgid(os.getgid()).gr_name
        uid, gid = os.getuid(), os.getgid()
    (base / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    (base / "dovecot.conf").write_text(CONF.format(dir=base, port=port, login_user=login_user, uid=uid, gid=gid,
                                                   internal_user=internal_user, internal_group=internal_group))
    return Dovecot(base, port).start()


def remove(server: Dovecot) -> None:
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)
