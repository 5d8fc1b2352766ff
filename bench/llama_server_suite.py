"""llama.cpp's own server test suite, run against janlib and against llama-server on the same model.

    python bench/llama_server_suite.py [--workdir DIR] [--files test_completion.py ...] [--servers janlib llama-server]
                                       [--side-by-side] [--shards N] [--port P] [--reuse-reports]

Nothing of llama.cpp is copied into this repository: the script downloads the pinned llama-cpp-python sdist
(`pip download --no-deps --no-binary :all:`), whose vendor/llama.cpp holds the tests (tools/server/tests) and
the server's source, builds llama-server from it with cmake (CPU only, no AMX, no curl), and installs the
tests' requirements in a venv of its own, all under --workdir.

The tests start their server through LLAMA_SERVER_BIN_PATH with their own flags. A launcher shim per server
swaps the model source flags (--hf-repo, --hf-file, --model-url, --model, --offline) for SmolLM2-135M-Instruct
and passes every other flag through unchanged: `janlib serve` takes llama-server's flags itself, so each
test's options (slots, context, metrics, API key, ...) apply to both servers alike. Tests that assert the
outputs of llama.cpp's stories260K test model fail on both servers alike.

At the end the pass counts are printed side by side, per file and in total, with every test whose
outcome differs between the two servers. A full run takes tens of minutes on two loaded cores: --side-by-side
runs both servers at once and --shards splits each server's files over several pytest runs (each on its own
port); --reuse-reports prints the table from the reports already in --workdir."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
SDIST_DIR = "llama_cpp_python-0.3.36"
TESTS = Path("vendor/llama.cpp/tools/server/tests")
SOURCE = Path("vendor/llama.cpp")

# Files that need what neither server has here (other models, a network, helper services); every other
# unit test file runs, the same for both servers.
EXCLUDED = {
    "test_embedding.py": "a BERT embedding model",
    "test_rerank.py": "a reranking model",
    "test_lora.py": "LoRA adapters of stories15M",
    "test_speculative.py": "a draft model",
    "test_vision_api.py": "a multimodal projector and images from the network",
    "test_router.py": "llama-server's router mode over a models directory",
    "test_proxy.py": "llama-server's CORS proxy to outside hosts",
    "test_mcp_servers.py": "MCP servers",
    "test_tools_builtin.py": "llama-server's built-in tools runtime",
    "test_compat_gcp.py": "Google Cloud's prediction environment",
    "test_sleep.py": "llama-server's idle unloading",
}

SHIM = """#!/bin/sh
# Launcher shim for llama.cpp's server tests: the model source flags become -m {model}; the rest pass through.
model={model}
set -- "$@" END_OF_ARGS
while [ "$1" != END_OF_ARGS ]; do
  case "$1" in
    --hf-repo|-hf|-hfr|--hf-file|-hff|--model-url|-mu|--model|-m) shift 2; continue ;;
    --offline) shift; continue ;;
  esac
  set -- "$@" "$1"; shift
done
shift
exec {command} -m "$model" "$@"
"""


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def fetch_sources(workdir: Path) -> Path:
    root = workdir / SDIST_DIR
    if not root.exists():
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", workdir])
        with tarfile.open(workdir / f"{SDIST_DIR}.tar.gz") as archive:
            archive.extractall(workdir, filter="data")
    return root


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def build_llama_server(root: Path, build: Path, jobs: int) -> Path:
    """llama-server for this CPU's instruction sets, AMX off (its tile kernels are not what the comparison is
    about, and many CPUs lack them), without curl or OpenSSL."""
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    flags = cpu_flags()
    isa = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2",
           "GGML_AVX512": "avx512f", "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16",
           "GGML_AVX_VNNI": "avx_vnni"}
    options = [f"-D{name}={'ON' if flag in flags else 'OFF'}" for name, flag in isa.items()]
    run(["cmake", "-S", root / SOURCE, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
         "-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", *options])
    run(["cmake", "--build", build, "--target", "llama-server", "-j", str(jobs)])
    return binary


def test_venv(workdir: Path, tests: Path) -> Path:
    venv = workdir / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", venv])
        run([python, "-m", "pip", "install", "-q", "-r", tests / "requirements.txt"])
    return python


def write_shim(path: Path, model: str, command: str) -> Path:
    path.write_text(SHIM.format(model=shlex.quote(model), command=command))
    path.chmod(0o755)
    return path


def start_suite(python: Path, tests: Path, files: list[str], shim: Path, report: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, LLAMA_SERVER_BIN_PATH=str(shim), PORT=str(port))
    env.pop("SLOW_TESTS", None)
    cmd = [python, "-m", "pytest", *[f"unit/{f}" for f in files], "-m", "not slow", "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", "-o", "junit_family=xunit1"]
    print("+", " ".join(map(str, cmd)), flush=True)
    with open(report.with_suffix(".log"), "w") as log:  # its own session: a timeout ends the tests' servers too
        return subprocess.Popen([str(c) for c in cmd], cwd=tests, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_suite(process: subprocess.Popen, name: str, deadline: float) -> None:
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print(f"the run against {name} passed its time limit; results so far only", flush=True)


def server_reports(workdir: Path, server: str) -> list[Path]:
    """The server's JUnit reports in workdir: one, or one per shard."""
    return sorted([*workdir.glob(f"{server}.xml"), *workdir.glob(f"{server}.[0-9]*.xml")])


def outcomes(report: Path) -> dict[str, str]:
    """test id -> passed | failed | skipped, from the JUnit report."""
    out: dict[str, str] = {}
    if not report.exists():
        return out
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}.py::{case.get('name')}"
        if case.find("skipped") is not None:
            out[name] = "skipped"
        elif case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        else:
            out[name] = "passed"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "janlib" / "llama-server-suite",
                   help="where the sdist, the llama-server build and the tests' venv live (reused between runs)")
    p.add_argument("--files", nargs="*", help="test files to run (default: all but those needing other models)")
    p.add_argument("--servers", nargs="*", default=["janlib", "llama-server"], choices=["janlib", "llama-server"])
    p.add_argument("--jobs", type=int, default=2, help="build jobs (default 2)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per server's run (default 3600)")
    p.add_argument("--port", type=int, default=8180,
                   help="the port the tests start their servers on (default 8180; further runs take the next ones)")
    p.add_argument("--side-by-side", action="store_true",
                   help="run both servers' suites at the same time (about half the wall time; the tests assert no durations)")
    p.add_argument("--shards", type=int, default=1,
                   help="split each server's test files over this many pytest runs at once (next ports; default 1)")
    p.add_argument("--reuse-reports", action="store_true",
                   help="a server whose JUnit report from an earlier run is in --workdir is not run again")
    args = p.parse_args(argv)

    from janlib.fetch import fetch_model

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(fetch_model("smollm2-135m-instruct"))
    root = fetch_sources(workdir)
    tests = root / TESTS
    files = args.files or sorted(f.name for f in (tests / "unit").glob("test_*.py") if f.name not in EXCLUDED)
    python = test_venv(workdir, tests)
    commands = {"janlib": f"{shlex.quote(sys.executable)} -m janlib.server"}
    if "llama-server" in args.servers:
        commands["llama-server"] = shlex.quote(str(build_llama_server(root, workdir / "build-cpu", args.jobs)))
    shards = [files[k::args.shards] for k in range(args.shards)]  # whole files, so each keeps its own fixtures
    running = []
    for i, server in enumerate(args.servers):
        shim = write_shim(workdir / f"{server}-shim", model, commands[server])
        if args.reuse_reports and server_reports(workdir, server):
            continue
        for old in server_reports(workdir, server):
            old.unlink()
        for k, shard in enumerate(shards):
            report = workdir / (f"{server}.xml" if args.shards == 1 else f"{server}.{k}.xml")
            process = start_suite(python, tests, shard, shim, report, args.port + i * args.shards + k)
            running.append((process, server, time.monotonic() + args.timeout))
        if not args.side_by_side:
            while running:
                wait_suite(*running.pop())
    for run in running:
        wait_suite(*run)
    results = {server: {name: outcome for report in server_reports(workdir, server)
                        for name, outcome in outcomes(report).items()} for server in args.servers}

    names = sorted(set().union(*results.values()))
    width = max(len(f) for f in files) + 2
    print("\npassed (of the tests not marked slow)")
    print("file".ljust(width) + "".join(s.rjust(14) for s in args.servers) + "tests".rjust(8))
    for f in files + ["total"]:
        ids = [n for n in names if f == "total" or n.startswith(f)]
        counts = [sum(results[s].get(n) == "passed" for n in ids) for s in args.servers]
        print(f.ljust(width) + "".join(str(c).rjust(14) for c in counts) + str(len(ids)).rjust(8))
    if len(args.servers) == 2:
        a, b = args.servers
        differ = [n for n in names if results[a].get(n) != results[b].get(n)]
        print(f"\n{len(differ)} tests with different outcomes ({a} / {b}):")
        for n in differ:
            print(f"  {results[a].get(n, 'absent'):8} {results[b].get(n, 'absent'):8} {n}")
    print(f"\nlogs and JUnit reports: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
