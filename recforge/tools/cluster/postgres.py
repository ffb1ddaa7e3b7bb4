"""The cluster's PostgreSQL 15 (Debian's binaries): its own data directory, 127.0.0.1 only, password logins
(scram-sha-256), one database and owner role each for Airflow's metadata and MLflow's backend store.

PostgreSQL refuses to run as root: as root it runs as the Debian package's ``postgres`` user, which then owns
``<cluster>/postgres`` and must be able to enter the folders above it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from recforge.core.errors import RecForgeError, first_line
from recforge.tools.cluster.processes import last_line
from recforge.tools.cluster.settings import DATABASES, HOST, ClusterConfig, ClusterPaths

PG_BIN = Path(os.environ.get("RECFORGE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "recforge"
TITLE = "PostgreSQL"


class ServiceError(RecForgeError):
    """A cluster service did not start or does not answer; the message names it and its log."""


def run_as_user() -> str | None:
    """The user PostgreSQL runs as: None = the current one; ``postgres`` when we are root."""
    return "postgres" if os.geteuid() == 0 else None


def as_user(argv: list[str]) -> list[str]:
    user = run_as_user()
    return ["runuser", "-u", user, "--", *argv] if user else argv


def connection_url(cfg: ClusterConfig, secrets: dict[str, str], database: str, driver: str = "psycopg") -> str:
    """SQLAlchemy URL of ``database`` as its owner role (for Airflow and MLflow)."""
    password = secrets[f"{database}_db_password"]
    return f"postgresql+{driver}://{database}:{password}@{HOST}:{cfg.postgres_port}/{database}"


class Postgres:
    """Start, check and stop the cluster's PostgreSQL server with pg_ctl."""

    title = TITLE
    name = "postgres"

    def __init__(self, paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str]):
        self.dir = paths.service_dir("postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.cfg, self.secrets = cfg, secrets
        self.address = f"{HOST}:{cfg.postgres_port}"

    def healthy(self) -> bool:
        """Accepting connections on 127.0.0.1:<port> (pg_isready)."""
        out = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", HOST, "-p", str(self.cfg.postgres_port),
                              "-t", "2"], capture_output=True)
        return out.returncode == 0

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and self.healthy()

    def start(self) -> None:
        """Initialize the data directory on first use, start the server, create the roles and databases."""
        if not (PG_BIN / "postgres").exists():
            raise ServiceError(f"{TITLE}: no server binaries in {PG_BIN}; run infra/local/system-packages.sh")
        self._prepare_dir()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        options = f"-c listen_addresses={HOST} -p {self.cfg.postgres_port} -k ''"  # TCP on 127.0.0.1 only
        started = subprocess.run(as_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                          "-o", options, "-w", "-t", "60", "start"]),
                                 cwd=self.dir, capture_output=True, text=True)
        if started.returncode != 0 or not self.healthy():
            raise ServiceError(f"{TITLE} did not start on {self.address}; see {self.log} "
                               f"({last_line(self.log) or started.stderr.strip()[:200]})")
        self._create_databases()

    def stop(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        subprocess.run(as_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                                "stop"]), cwd=self.dir, capture_output=True)
        return True

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        user = run_as_user()
        if user is None:
            return
        if subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(self.dir.parent)]).returncode != 0:
            raise ServiceError(f"{TITLE} runs as user {user} (it refuses root), who cannot enter {self.dir.parent}: "
                               "make the folders above it enterable (chmod o+x) or set RECFORGE_HOME elsewhere")
        entry = pwd.getpwnam(user)
        for path in [self.dir, *self.dir.rglob("*")]:
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        self.dir.chmod(0o700)

    def _initdb(self) -> None:
        """A new cluster with the generated superuser password (scram-sha-256 over TCP, peer on no socket)."""
        pwfile = self.dir / ".initdb-password"
        pwfile.write_text(self.secrets["postgres_password"] + "\n")
        pwfile.chmod(0o600)
        if user := run_as_user():
            shutil.chown(pwfile, user, user)
        try:
            out = subprocess.run(as_user([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                                          f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=peer",
                                          "-E", "UTF8", "--no-locale"]),
                                 cwd=self.dir, capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            (self.dir / "initdb.log").write_text(out.stdout + out.stderr)
            raise ServiceError(f"{TITLE}: initdb failed in {self.data}; see {self.dir / 'initdb.log'}")

    def _create_databases(self) -> None:
        """One login role and one database it owns per service (idempotent)."""
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(host=HOST, port=self.cfg.postgres_port, user=SUPERUSER, dbname="postgres",
                                 password=self.secrets["postgres_password"], autocommit=True,
                                 connect_timeout=10) as conn:
                for name in DATABASES:
                    password = self.secrets[f"{name}_db_password"]
                    role = sql.Identifier(name)
                    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
                    else:
                        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
        except psycopg.Error as err:
            raise ServiceError(f"{TITLE} on {self.address}: cannot create the databases {list(DATABASES)}: "
                               f"{first_line(err)}; "
                               f"see {self.log}") from None
