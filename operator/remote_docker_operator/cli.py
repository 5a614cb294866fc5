"""`kubectl buildjob`: a kubectl plugin (the `kubectl-buildjob` command the package installs).

    kubectl buildjob run -f FILE [--follow]   submit; with --follow stream the job's log and
                                              exit with the job's own exit code
    kubectl buildjob logs NAME [-f]           the job's log

What a CI step needs: one command that submits, shows progress while the engine starts, prints
the log and fails when the job fails. The kubeconfig, context and namespace are kubectl's
(`--kubeconfig`, `--context`, `-n`, KUBECONFIG). Exit codes: the job's own with --follow; 1
when the command itself could not do its work (the message says why); 2 for bad arguments.
"""

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import names
from .clitext import CliError, api_message, progress

Obj = dict[str, Any]
POLL_SECONDS = 1.0
TERMINAL = ("Succeeded", "Failed")


# -- pure: what a BuildJob's status means to the person at the terminal -----------------------


def load_buildjob(text: str, source: str, namespace: str) -> Obj:
    """The one BuildJob in a YAML text, in `namespace` unless it names its own."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise CliError(f"{source}: not YAML: {e}") from e
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise CliError(f"{source}: expected one BuildJob, found {len(docs)} documents")
    body: Obj = docs[0]
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if (api_version, kind) != (f"{names.GROUP}/{names.VERSION}", names.KIND):
        raise CliError(
            f"{source}: expected apiVersion {names.GROUP}/{names.VERSION}, kind {names.KIND}; "
            f"found {api_version}, {kind}"
        )
    meta = body.setdefault("metadata", {})
    if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
        raise CliError(f"{source}: metadata.name (or generateName) is required")
    meta.setdefault("namespace", namespace)
    return body


def exit_code(status: Obj) -> int:
    """The job's own exit code; 1 when it failed without one (its engine never came up)."""
    code = status.get("exitCode")
    if isinstance(code, int):
        return code
    return 0 if status.get("phase") == "Succeeded" else 1


# -- act: the API calls -------------------------------------------------------------------------


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, body: Obj) -> Obj:
        try:
            created = cast(
                Obj,
                self.custom.create_namespaced_custom_object(
                    names.GROUP, names.VERSION, body["metadata"]["namespace"], names.PLURAL, body
                ),
            )
        except ApiException as e:
            raise CliError(f"the API server refused the BuildJob: {api_message(e)}") from e
        return created

    def get(self, namespace: str, name: str) -> Obj:
        try:
            found = cast(
                Obj,
                self.custom.get_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.PLURAL, name
                ),
            )
        except ApiException as e:
            if e.status == 404:
                raise CliError(f"buildjob {namespace}/{name} not found") from e
            raise CliError(f"reading buildjob {namespace}/{name}: {api_message(e)}") from e
        return found

    def log(self, namespace: str, pod: str, follow: bool) -> Iterator[bytes]:
        """The job container's log, as it comes. Raises ApiException while the container has not
        started (400) or once the pod is gone (404)."""
        response: Any = self.core.read_namespaced_pod_log(
            pod, namespace, container=names.JOB_CONTAINER, follow=follow, _preload_content=False
        )
        try:
            yield from response.stream(4096, decode_content=True)
        finally:
            response.release_conn()


class Session:
    """One command's run: the cluster, where the log (bytes, as the container wrote them) and
    the progress lines go, and the clock (tests pass their own)."""

    def __init__(
        self,
        cluster: Cluster,
        out: BinaryIO = sys.stdout.buffer,
        err: TextIO = sys.stderr,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cluster, self.out, self.err, self.sleep = cluster, out, err, sleep
        self.told = ""  # the progress line last shown

    def say(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def wait(self, namespace: str, name: str, until: Callable[[Obj], bool]) -> Obj:
        """Polls the BuildJob, telling each change of phase or reason, until `until(status)`."""
        while True:
            status = self.cluster.get(namespace, name).get("status") or {}
            line = progress(status)
            if line != self.told:
                self.say(f"buildjob/{name}: {line}")
                self.told = line
            if until(status):
                return status
            self.sleep(POLL_SECONDS)

    def stream_log(self, namespace: str, name: str, follow: bool) -> Obj:
        """Writes the job's log to out (following it if asked) and returns the last status read.
        Waits while the job container has not started; stops early if the BuildJob ends
        without one."""
        while True:
            status = self.wait(
                namespace, name, lambda s: bool(s.get("jobPod")) or s.get("phase") in TERMINAL
            )
            if not status.get("jobPod"):
                return status  # it ended before there was a job pod (a refused spec, say)
            try:
                for chunk in self.cluster.log(namespace, status["jobPod"], follow):
                    self.out.write(chunk)
                    self.out.flush()
            except urllib3.exceptions.HTTPError as e:
                raise CliError(f"the job's log stream broke off: {e}") from e
            except ApiException as e:
                if e.status == 404:
                    raise CliError(
                        f"the log of buildjob {namespace}/{name} is gone: its job pod was "
                        "deleted (after the TTL, or by hand)"
                    ) from e
                if e.status != 400:
                    raise CliError(f"reading the job's log: {api_message(e)}") from e
                # 400: the job container has not started (its init container waits for the
                # engine); ended, the BuildJob will never start it.
                current = self.cluster.get(namespace, name).get("status") or {}
                if current.get("phase") in TERMINAL:
                    return current
                self.sleep(POLL_SECONDS)
            else:
                return status

    def run(self, path: str, namespace: str, follow: bool) -> int:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as e:
            raise CliError(f"{path}: {e.strerror}") from e
        created = self.cluster.create(load_buildjob(text, path, namespace))
        meta = created["metadata"]
        self.say(f"buildjob.{names.GROUP}/{meta['name']} created in namespace {meta['namespace']}")
        if not follow:
            return 0
        return self.finish(meta["namespace"], meta["name"])

    def finish(self, namespace: str, name: str) -> int:
        self.stream_log(namespace, name, follow=True)
        status = self.wait(namespace, name, lambda s: s.get("phase") in TERMINAL)
        code = exit_code(status)
        self.say(f"buildjob/{name}: exit code {code}")
        return code

    def logs(self, namespace: str, name: str, follow: bool) -> int:
        status = self.stream_log(namespace, name, follow)
        if not status.get("jobPod"):
            raise CliError(f"buildjob {namespace}/{name} has no job pod: {progress(status)}")
        return 0


# -- the command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kubectl buildjob", description="Run BuildJobs and read their logs."
    )
    top.add_argument("--kubeconfig", help="the kubeconfig file (default: KUBECONFIG, ~/.kube)")
    top.add_argument("--context", help="the kubeconfig context")
    top.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="submit a BuildJob; --follow to see it through")
    run.add_argument("-f", "--filename", required=True, help="the BuildJob's YAML ('-': stdin)")
    run.add_argument(
        "--follow",
        action="store_true",
        help="show progress, stream the job's log, exit with the job's exit code",
    )
    logs = commands.add_parser("logs", help="print a BuildJob's job log")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the log")
    return top


def connect(args: argparse.Namespace) -> tuple[Cluster, str]:
    """The cluster and namespace that kubectl with the same flags would use."""
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context
        )
        contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig
        )
    except (config.ConfigException, OSError) as e:
        raise CliError(f"no usable kubeconfig: {e}") from e
    if args.context:
        current = next((c for c in contexts if c["name"] == args.context), current)
    namespace = args.namespace or (current or {}).get("context", {}).get("namespace") or "default"
    return Cluster(client.ApiClient()), namespace


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cluster, namespace = connect(args)
        session = Session(cluster)
        if args.command == "run":
            return session.run(args.filename, namespace, args.follow)
        return session.logs(namespace, args.name, args.follow)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
