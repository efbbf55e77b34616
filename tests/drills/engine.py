"""A Docker engine of the compose drill's own, and the images it builds (`make compose-drill`).

Image registries are out of reach here, so nothing is ever pulled: Debian's `docker.io` runs an
engine as root on a socket and data directory of its own (`--storage-driver vfs
--bridge=none --iptables=false`, containers on the host's network), Debian's `mmdebstrap` makes
a bookworm root file system that `docker import` turns into the base, and stand-ins of the three
images docker/compose.yaml names are built on it and tagged under those names
(tests/drills/compose/*.Dockerfile): python:3.11-slim, postgres:16 and redis:7. The portal image
is then built from docker/Dockerfile unchanged but for `BASE_IMAGE`.

The portal's `pip install` needs this machine's CA bundle and pip configuration to reach the
package registry. They go into a layer of their own on top of the python stand-in (built from a
temporary directory, never from the repository), the portal image is built on that, and the
layer is then taken out of the image (`strip_layers`: its history entry and diff id removed,
the rest loaded back unchanged), so the image the stack runs never held them: `scan_image`
checks it, file by file in every layer and in `docker history`.

Packages are installed only when missing (a `policy-rc.d` keeps Debian from starting their
daemons), and `Engine.stop` leaves the machine as found: containers, engine, its data and, unless
kept, the packages this run installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "compose"
PACKAGES = {"docker.io": "/usr/sbin/dockerd", "mmdebstrap": "/usr/bin/mmdebstrap"}
COMPOSE_PACKAGE = "docker-compose"
POLICY = Path("/usr/sbin/policy-rc.d")
TRUST_KEY = Path("/etc/docker/key.json")
DOCKER = "/usr/bin/docker"  # the engine's own client, not whatever else is first on PATH
DEBIAN_BASE = "portal-drill/debian:bookworm"
# The certificates layer's image and the portal built on it: tags of this run only (random, so
# that the image scan can look for the BASE_IMAGE value passed at build and find it nowhere).
CERTS_REPOSITORY = "portal-drill/python-certs"
PORTAL_WITH_CERTS = "portal-drill/portal:with-certs"
STAND_INS = {
    "python:3.11-slim": "python.Dockerfile",
    "postgres:16": "postgres.Dockerfile",
    "redis:7": "redis.Dockerfile",
}


class EngineError(Exception):
    pass


def installed_packages() -> set[str]:
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0] for line in listed.splitlines() if line.split()[1:2] == ["ii"]}


class Engine:
    """dockerd on its own socket and data directory; `docker` and `compose` talk to it only."""

    def __init__(
        self, log: Callable[[str], None], keep_packages: bool = False, data: Path | None = None
    ) -> None:
        self.say = log
        self.keep_packages = keep_packages
        self.root = Path(tempfile.mkdtemp(prefix="portal-compose-drill-", dir="/var/tmp"))
        # `data` (for working on the drill): the engine's images kept there between runs.
        self.data = data or self.root / "data"
        # A short path: the engine's and containerd's sockets live under it (108 bytes at most).
        self.exec_root = Path(tempfile.mkdtemp(prefix="pcd-", dir="/run"))
        self.socket = self.exec_root / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.added: list[str] = []
        self.policy_written = False
        self.timings: dict[str, float] = {}
        self.certs_base = f"{CERTS_REPOSITORY}:{secrets.token_hex(8)}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))},
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "1",
            "COMPOSE_DOCKER_CLI_BUILD": "1",
            # No client configuration of the machine's (credentials, contexts) is read.
            "DOCKER_CONFIG": str(self.root / "client"),
        }
        (self.root / "client").mkdir()

    # Packages ----------------------------------------------------------------------------

    def install(self) -> list[str]:
        """apt-get the missing packages (without recommends, no daemon started); their names."""
        have = installed_packages()
        wanted = [name for name in [*PACKAGES, COMPOSE_PACKAGE] if name not in have]
        if not wanted:
            return []
        if os.geteuid() != 0:
            raise EngineError(f"run as root, or install first: apt-get install {' '.join(wanted)}")
        began = time.monotonic()
        if not POLICY.exists():
            POLICY.write_text(
                "#!/bin/sh\n# written by the compose drill; removed after install\nexit 101\n"
            )
            POLICY.chmod(0o755)
            self.policy_written = True
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for argv in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted],
            ):
                done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
                if done.returncode != 0:
                    raise EngineError(f"{' '.join(argv[:2])} failed:\n{done.stderr[-2000:]}")
        finally:
            if self.policy_written:
                POLICY.unlink(missing_ok=True)
                self.policy_written = False
        self.timings["install"] = time.monotonic() - began
        self.added = sorted(installed_packages() - have)
        return wanted

    def remove_packages(self) -> list[str]:
        """Purge the packages this run's install added (dependencies included), unless kept,
        and only if apt would remove nothing else (a package installed since may need them)."""
        if not self.added or self.keep_packages:
            return []
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        plan = subprocess.run(
            ["apt-get", "purge", "-s", *self.added], env=env, capture_output=True, text=True
        ).stdout
        going = {line.split()[1] for line in plan.splitlines() if line.startswith(("Purg", "Remv"))}
        if going - set(self.added):
            self.say(
                f"  packages kept: removing them would remove {sorted(going - set(self.added))}"
            )
            return []
        subprocess.run(
            ["apt-get", "purge", "-y", "-qq", *self.added],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        return [f"{len(self.added)} packages ({', '.join(self.added[:3])}, ...)"]

    # The engine --------------------------------------------------------------------------

    def start(self) -> float:
        began = time.monotonic()
        # dockerd writes its trust key to /etc/docker/key.json whatever its data root: removed
        # in stop() when this run made it.
        self.made = [path for path in (TRUST_KEY.parent, TRUST_KEY) if not path.exists()]
        config = self.root / "daemon.json"
        config.write_text("{}\n")  # never the machine's /etc/docker/daemon.json
        self.log_path = self.root / "dockerd.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    "/usr/sbin/dockerd",
                    "--config-file",
                    str(config),
                    "--data-root",
                    str(self.data),
                    "--exec-root",
                    str(self.exec_root),
                    "--pidfile",
                    str(self.exec_root / "docker.pid"),
                    "--host",
                    f"unix://{self.socket}",
                    "--storage-driver",
                    "vfs",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--userland-proxy=false",
                    "--log-level",
                    "warn",
                ],  # fmt: skip
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited:\n{self.log_path.read_text()[-2000:]}")
            if self.docker("info", check=False, timeout=10).returncode == 0:
                self.timings["engine start"] = time.monotonic() - began
                return self.timings["engine start"]
            time.sleep(0.5)
        raise EngineError("dockerd did not answer within 60 s")

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [DOCKER, *args],
            env=self.env,
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise EngineError(f"docker {' '.join(args[:3])} failed: {out(done.stderr)[-1500:]}")
        return done  # type: ignore[return-value]

    def stop(self) -> list[str]:
        """Containers, engine, its files; then the packages this run added. What was removed."""
        removed: list[str] = []
        if self.process is not None and self.process.poll() is None:
            ids = self.docker("ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=300)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            # containerd, started by dockerd in its group, goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            removed.append("engine")
        for path in (self.root, self.exec_root):
            unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)
        for made in reversed(getattr(self, "made", [])):
            with contextlib.suppress(OSError):
                made.unlink() if made.is_file() else made.rmdir()
        removed += self.remove_packages()
        return removed

    # Images ------------------------------------------------------------------------------

    def timed(self, name: str, step: Callable[[], Any]) -> Any:
        began = time.monotonic()
        result = step()
        self.timings[name] = time.monotonic() - began
        self.say(f"  {name}: {self.timings[name]:.1f}s")
        return result

    def build(self, tag: str, dockerfile: Path, context: Path, *args: str) -> None:
        done = self.docker(
            "build", "--network", "host", "--progress", "plain", "-f", str(dockerfile),
            "-t", tag, *args, str(context), check=False, timeout=1800,
        )  # fmt: skip
        (self.root / f"build-{tag.replace('/', '_').replace(':', '_')}.log").write_text(
            out(done.stderr)
        )
        if done.returncode != 0:
            raise EngineError(f"building {tag} failed:\n{quiet(out(done.stderr))[-3000:]}")

    def build_all(self, portal_tag: str) -> dict[str, float]:
        """The base, the stand-ins, the portal image (its certificates layer stripped)."""
        base_tar = self.root / "bookworm.tar"
        sources = Path("/etc/apt/sources.list.d/debian.sources")
        if not sources.exists():
            sources = Path("/etc/apt/sources.list")

        def debootstrap() -> None:
            with open(sources, "rb") as stdin:
                done = subprocess.run(
                    [
                        "mmdebstrap",
                        "--variant=minbase",
                        "--include=ca-certificates",
                        '--aptopt=Acquire::Languages "none"',
                        "--dpkgopt=path-exclude=/usr/share/doc/*",
                        "--dpkgopt=path-exclude=/usr/share/man/*",
                        "--dpkgopt=path-exclude=/usr/share/locale/*",
                        "bookworm",
                        str(base_tar),
                        "-",
                    ],  # fmt: skip
                    stdin=stdin,
                    capture_output=True,
                    timeout=900,
                )
            if done.returncode != 0:
                raise EngineError(f"mmdebstrap failed:\n{out(done.stderr)[-2000:]}")

        self.timed("base: mmdebstrap minbase bookworm", debootstrap)
        self.timed("base: docker import", lambda: self.docker("import", str(base_tar), DEBIAN_BASE))
        base_tar.unlink()
        for tag, dockerfile in STAND_INS.items():
            began = time.monotonic()
            self.build(tag, HERE / dockerfile, HERE)
            self.timings[f"stand-in {tag}"] = time.monotonic() - began
            self.say(f"  stand-in {tag}: {self.timings[f'stand-in {tag}']:.1f}s")
        context = self.root / "certs"
        context.mkdir()
        shutil.copy(machine_ca_bundle(), context / "ca-certificates.crt")
        pip_conf = Path("/etc/pip.conf")
        (context / "pip.conf").write_text(
            pip_conf.read_text() if pip_conf.exists() else "[global]\n"
        )
        shutil.copy(HERE / "certs.Dockerfile", context / "Dockerfile")
        self.timed(
            "certificates layer (build only)",
            lambda: self.build(self.certs_base, context / "Dockerfile", context),
        )
        shutil.rmtree(context)
        self.timed(
            "portal image (docker/Dockerfile)",
            lambda: self.build(
                PORTAL_WITH_CERTS,
                REPO_ROOT / "docker" / "Dockerfile",
                REPO_ROOT,
                "--build-arg",
                f"BASE_IMAGE={self.certs_base}",
            ),
        )
        self.timed(
            "certificates layer stripped",
            lambda: self.strip_layers(
                PORTAL_WITH_CERTS, self.certs_base, "python:3.11-slim", portal_tag
            ),
        )
        return dict(self.timings)

    def discard_build_only(self) -> None:
        """The image with the certificates layer, that layer's image, and the build cache."""
        self.docker("rmi", PORTAL_WITH_CERTS, self.certs_base)
        self.docker("builder", "prune", "--all", "--force", check=False)

    def inspect(self, image: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.docker("image", "inspect", image).stdout)
        return found[0]

    def strip_layers(self, image: str, with_layer: str, without: str, tag: str) -> None:
        """`image` built on `with_layer` (= `without` plus layers) becomes `tag`: the same
        image without those layers and their history entries, loaded back."""
        extra = self.inspect(with_layer)["RootFS"]["Layers"][
            len(self.inspect(without)["RootFS"]["Layers"]) :
        ]
        history_count = len(self.history(without))
        history_extra = len(self.history(with_layer)) - history_count
        saved = self.root / "with-layer.tar"
        with open(saved, "wb") as sink:
            done = subprocess.run(
                [DOCKER, "save", image],
                env=self.env,
                stdout=sink,
                stderr=subprocess.PIPE,
                timeout=900,
            )
        if done.returncode != 0:
            raise EngineError(f"docker save failed: {out(done.stderr)}")
        stripped = self.root / "stripped.tar"
        with tarfile.open(saved) as source, tarfile.open(stripped, "w") as target:
            manifest = json.load(source.extractfile("manifest.json"))  # type: ignore[arg-type]
            entry = manifest[0]
            config = json.load(source.extractfile(entry["Config"]))  # type: ignore[arg-type]
            diff_ids = config["rootfs"]["diff_ids"]
            drop = [i for i, diff in enumerate(diff_ids) if diff in extra]
            if len(drop) != len(extra) or not drop:
                raise EngineError(f"{image} does not hold the layers of {with_layer}")
            dropped_paths = {entry["Layers"][i] for i in drop}
            config["rootfs"]["diff_ids"] = [d for i, d in enumerate(diff_ids) if i not in drop]
            # History entries are in build order: the base's, the stripped layers', the image's.
            config["history"] = (
                config["history"][:history_count]
                + config["history"][history_count + history_extra :]
            )
            entry["Layers"] = [p for i, p in enumerate(entry["Layers"]) if i not in drop]
            blob = json.dumps(config, separators=(",", ":")).encode()
            digest = hashlib.sha256(blob).hexdigest()
            entry["Config"] = f"{digest}.json"
            entry["RepoTags"] = [tag]
            for member in source:
                folder = member.name.split("/", 1)[0]
                if (
                    member.name in ("manifest.json", "repositories")
                    or member.name.endswith(".json")
                    and "/" not in member.name
                ):
                    continue
                if any(path.split("/", 1)[0] == folder for path in dropped_paths):
                    continue
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
            add_bytes(target, entry["Config"], blob)
            add_bytes(target, "manifest.json", json.dumps(manifest).encode())
        saved.unlink()
        with open(stripped, "rb") as stdin:
            done = subprocess.run(
                [DOCKER, "load"], env=self.env, stdin=stdin, capture_output=True, timeout=900
            )
        stripped.unlink()
        if done.returncode != 0:
            raise EngineError(f"docker load failed: {out(done.stderr)}")

    def history(self, image: str) -> list[str]:
        """`docker history`'s CreatedBy lines, oldest first."""
        lines = self.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        return list(reversed(lines.splitlines()))

    def scan_image(self, image: str, needles: dict[str, bytes]) -> dict[str, Any]:
        """Every file of every layer of `image`, and its history, searched for each needle;
        also whether any layer holds etc/pip.conf. Returns the hits by needle name."""
        saved = self.root / "scan.tar"
        with open(saved, "wb") as sink:
            subprocess.run(
                [DOCKER, "save", image], env=self.env, stdout=sink, check=True, timeout=900
            )
        hits: dict[str, list[str]] = {name: [] for name in needles}
        files = 0
        scanned = 0
        with tarfile.open(saved) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            config = outer.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
            for name, needle in needles.items():
                if needle in config:
                    hits[name].append("image configuration")
            for layer in manifest[0]["Layers"]:
                with tarfile.open(fileobj=outer.extractfile(layer)) as inner:  # type: ignore[arg-type]
                    for member in inner:
                        if member.name in ("etc/pip.conf", "root/.config/pip/pip.conf"):
                            hits.setdefault("pip configuration file", []).append(member.name)
                        if not member.isfile():
                            continue
                        data = inner.extractfile(member).read()  # type: ignore[union-attr]
                        files += 1
                        scanned += len(data)
                        for name, needle in needles.items():
                            if needle in data:
                                hits[name].append(member.name)
        saved.unlink()
        history = "\n".join(self.history(image)).encode()
        for name, needle in needles.items():
            if needle in history:
                hits[name].append("docker history")
        return {
            "hits": hits,
            "files": files,
            "bytes": scanned,
            "layers": len(manifest[0]["Layers"]),
        }


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    archive.addfile(info, io.BytesIO(data))


def machine_ca_bundle() -> Path:
    cafile = ssl.get_default_verify_paths().cafile
    for candidate in (os.environ.get("PIP_CERT"), cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise EngineError("no CA bundle found on this machine")


def extra_ca_bodies() -> dict[str, bytes]:
    """A line from the middle of each certificate this machine trusts beyond Debian's set
    (/usr/local/share/ca-certificates): what the certificates layer would leave behind."""
    found: dict[str, bytes] = {}
    for path in sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt")):
        lines = [line for line in path.read_bytes().splitlines() if len(line) == 64]
        if lines:
            found[f"machine CA {path.stem}"] = lines[len(lines) // 2]
    return found


def unmount_under(path: Path) -> None:
    """Anything still mounted below `path` (a container's shm, say), deepest first."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    points = sorted(
        (line.split()[1] for line in mounts if line.split()[1].startswith(str(path))),
        key=len,
        reverse=True,
    )
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def out(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def quiet(text: str) -> str:
    """Build output without pip's index lines (they name the registry's host)."""
    return "\n".join(
        line
        for line in text.splitlines()
        if not any(
            word in line
            for word in ("Looking in indexes", "Looking in links", "http://", "https://")
        )
    )
