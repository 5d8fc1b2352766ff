"""The `janlib` command line (janlib.cli): help of every command, message input, settings, and on the
real model `run`, `chat` in a pseudo-terminal (Ctrl-C included), `info` and `bench`.

Answers are checked against world knowledge with greedy decoding (temperature 0, no repetition
penalty), GGUF summaries against the gguf package's reader."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest

from gguf_builders import write_sample_gguf
from janlib import SamplingParams
from janlib.cli import SETTINGS, Settings, build_parser, main, read_message

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["serve", "chat", "run", "pull", "list", "info", "bench"]
QUESTION = "What is the capital of France? Answer in one word."
GREEDY = ["--temperature", "0", "--repeat-penalty", "1"]


def janlib(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "janlib", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


# --- help, entry point -----------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: janlib {command} ")
    assert "--help" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), command


def test_serve_help_is_the_servers_own():
    # the flags come from python -m janlib.server's parser, not a copy
    ours, theirs = janlib("serve", "--help"), subprocess.run(
        [sys.executable, "-m", "janlib.server", "--help"], capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0
    flags = set(re.findall(r"--[a-z][a-z-]+", theirs.stdout))
    assert {"--model", "--port", "--api-key", "--ctx-size"} <= flags
    assert set(re.findall(r"--[a-z][a-z-]+", ours.stdout)) == flags
    assert ours.stdout.startswith("usage: python -m janlib serve")


def test_console_script_is_declared_and_installed():
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    assert re.search(r'^\[project\.scripts\]\njanlib = "janlib\.cli:main"\n', pyproject, re.M)
    script = Path(sys.executable).parent / "janlib"
    if not script.exists():
        pytest.skip("this environment was installed before the console script existed: pip install -e . adds it")
    result = subprocess.run([str(script), "list", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: janlib list")


def test_run_without_a_prompt_is_a_clear_error():
    result = janlib("run", stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.startswith("janlib: error: no prompt")


# --- message input and settings ------------------------------------------------------


def _lines(*lines: str):
    pending = list(lines)

    def read_line(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read_line


@pytest.mark.parametrize("lines, message", [
    (["hello"], "hello"),
    (["first \\", "second\\", "third"], "first \nsecond\nthird"),
    (['"""', "a", "", "  b", '"""'], "a\n\n  b"),
    (['"""start', "end"""'"""'], "start\nend"),
    (['"""one line"""'], "one line"),
    (['"""', "cut short"], "cut short"),
])  # fmt: skip
def test_read_message_conventions(lines, message):
    assert read_message(_lines(*lines)) == message


def test_read_message_at_end_of_input():
    with pytest.raises(EOFError):
        read_message(_lines())


def test_settings_validate_and_name_the_field():
    settings = Settings(SamplingParams())
    settings.set("temperature", "0.7", n_vocab=100)
    settings.set("top_k", "5", n_vocab=100)
    settings.set("max_tokens", "-1", n_vocab=100)
    assert (settings.sampling.temperature, settings.sampling.top_k, settings.max_tokens) == (0.7, 5, -1)
    for name, value, message in [("top_p", "2", "top_p"), ("top_k", "x", "top_k"), ("max_tokens", "-2", "max_tokens"),
                                 ("nope", "1", "unknown setting")]:
        with pytest.raises(ValueError, match=message):
            settings.set(name, value, n_vocab=100)
    assert settings.sampling.top_p == SamplingParams().top_p  # a rejected value changes nothing
    assert set(SETTINGS) >= {"temperature", "top_p", "top_k", "max_tokens", "seed"}


def test_every_setting_is_a_flag_of_chat_and_run():
    parser = build_parser()
    for command in ("chat", "run"):
        args = parser.parse_args([command, *[f"--{n.replace('_', '-')}={1}" for n in SETTINGS]])
        assert all(getattr(args, name) == 1 for name in SETTINGS)


# --- info ----------------------------------------------------------------------------


def _reader_facts(path: Path) -> dict:
    """What the gguf package (an independent reader) says about a file."""
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    types = {t.tensor_type.name for t in reader.tensors}
    context = reader.fields.get(f"{arch}.context_length")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {
        "architecture": arch,
        "n_params": sum(int(t.n_elements) for t in reader.tensors),
        "types": types,
        "context": context.contents() if context else None,
        "vocab": len(tokens.data) if tokens else None,
        "template": "tokenizer.chat_template" in reader.fields,
    }


def _summary(out: str) -> dict[str, str]:
    return dict(re.match(r"(\S+(?: \S+)?)\s{2,}(.*)", line).groups() for line in out.splitlines()
                if not line.startswith(" ") and "  " in line)


def test_info_on_a_written_gguf(tmp_path, capsys):
    path = tmp_path / "sample.gguf"
    write_sample_gguf(path)
    assert main(["info", str(path), "--metadata"]) == 0
    out = capsys.readouterr().out
    facts, summary = _reader_facts(path), _summary(out)
    assert summary["architecture"] == facts["architecture"]
    assert summary["parameters"].replace(" ", "") in (str(facts["n_params"]), f"{facts['n_params'] / 1e3:.2f}K")
    assert set(re.findall(r"(\w+) \(\d+ tensors", summary["quant types"])) == facts["types"]
    assert summary["chat template"].startswith("yes" if facts["template"] else "no")
    assert "metadata (" in out and "general.architecture = 'llama'" in out


@pytest.mark.slow
def test_info_on_the_real_model(smollm2_path):
    result = janlib("info", str(smollm2_path))
    assert result.returncode == 0, result.stderr
    facts, summary = _reader_facts(smollm2_path), _summary(result.stdout)
    assert summary["architecture"] == facts["architecture"] == "llama"
    assert summary["parameters"] == f"{facts['n_params'] / 1e6:.2f} M"
    assert set(re.findall(r"(\w+) \(\d+ tensors", summary["quant types"])) == facts["types"]
    assert summary["context length"] == str(facts["context"])
    assert summary["vocab"].startswith(f"{facts['vocab']} tokens")
    assert summary["chat template"].startswith("yes") and facts["template"]


# --- run, bench ----------------------------------------------------------------------


@pytest.mark.slow
def test_run_answers_a_prompt_from_the_argument_and_from_stdin(smollm2_path):
    by_argument = janlib("run", "-m", str(smollm2_path), *GREEDY, "--max-tokens", "12", QUESTION,
                         stdin=subprocess.DEVNULL)
    assert by_argument.returncode == 0, by_argument.stderr
    assert "Paris" in by_argument.stdout
    by_stdin = janlib("run", "-m", str(smollm2_path), *GREEDY, "--max-tokens", "12", input=QUESTION + "\n")
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout == by_argument.stdout


@pytest.mark.slow
def test_bench_prints_pp_and_tg_rates(smollm2_path):
    result = janlib("bench", "-m", str(smollm2_path), "-p", "16", "-n", "4", "-r", "1", "-t", "1")
    assert result.returncode == 0, result.stderr
    rows = {m[0]: float(m[1]) for m in re.findall(r"\| (pp16|tg4)\s+\| ([\d.]+) ±", result.stdout)}
    assert set(rows) == {"pp16", "tg4"} and all(rate > 0 for rate in rows.values())


# --- chat in a pseudo-terminal ----------------------------------------------------------------


class Terminal:
    """A child process on a pseudo-terminal: what it prints, and keys typed into it (Ctrl-C included)."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its stdin, stdout, stderr and controlling tty
            os.execv(argv[0], argv)
        self.seen = ""

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 120) -> re.Match:
        """Wait for pattern in the output after everything matched so far."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.seen)):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal shows:\n{self.seen[-3000:]}")
            try:
                self.seen += os.read(self.fd, 65536).decode(errors="replace").replace("\r\n", "\n")
            except OSError:  # the child is gone
                raise AssertionError(f"no {pattern!r}; the child exited:\n{self.seen[-3000:]}") from None
        self.seen = self.seen[match.end():]
        return match

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            with_output = select.select([self.fd], [], [], 0.1)[0]
            if with_output:
                try:
                    self.seen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"still running after {timeout} s:\n{self.seen[-3000:]}")


@pytest.fixture
def chat(smollm2_path):
    terminal = Terminal([sys.executable, "-m", "janlib", "chat", "-m", str(smollm2_path), "-c", "2048", "-t", "1",
                         "--max-tokens", "12"])
    terminal.expect(r"/help for commands")
    yield terminal
    if terminal.fd is not None:
        try:
            os.kill(terminal.pid, signal.SIGKILL)
            os.waitpid(terminal.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.mark.slow
def test_chat_commands_and_answers(chat):
    chat.expect(">>> ")
    chat.type("/set temperature 0\n")
    chat.expect(r"\(temperature = 0\)")
    chat.type("/set repeat_penalty 1\n")
    chat.expect(r"\(repeat_penalty = 1\)")
    chat.type("/set top_p 7\n")
    chat.expect(r"error: top_p")
    chat.type("/set\n")
    chat.expect(r"temperature=0\.0 .*top_p=0\.95 .*max_tokens=12")
    chat.type(QUESTION + "\n")
    chat.expect(r"Paris")
    chat.expect(">>> ")
    chat.type("/system Always answer in French.\n")
    chat.expect(r"\(system prompt set\)")
    chat.type("/reset\n")
    chat.expect(r"\(conversation cleared\)")
    chat.type('"""\nWhat is the capital\nof France?\n"""\n')  # one message over three lines
    chat.expect(r"(?s)>>> \"\"\"\n\.\.\. What.*\n\.\.\. of.*\n\.\.\. \"\"\"\n", timeout=10)
    chat.expect(">>> ")
    chat.type("/nonsense\n")
    chat.expect(r"unknown command /nonsense")
    chat.type("/exit\n")
    assert chat.wait() == 0


@pytest.mark.slow
def test_chat_ctrl_c_stops_an_answer_and_the_prompt_comes_back(chat):
    chat.expect(">>> ")
    chat.type("\x03")  # at the prompt Ctrl-C does not leave
    chat.expect(r"Ctrl-D or /exit to leave")
    chat.type("/set max_tokens -1\n")
    chat.expect(r"\(max_tokens = -1\)")
    chat.type("/set temperature 1.5\n")
    chat.type("Write a very long story about a dragon and a knight.\n")
    chat.expect(r">>> Write a very long story about a dragon and a knight\.\n")  # readline's echo
    chat.expect(r"\w+ \w+ \w+ \w+")  # the answer is arriving
    chat.type("\x03")
    chat.expect(r"\(stopped\)", timeout=30)
    chat.expect(">>> ")
    chat.type("/set max_tokens 4\n")
    chat.expect(r"\(max_tokens = 4\)")
    chat.type("Thanks!\n")  # the conversation goes on after the interruption
    chat.expect(">>> ")
    time.sleep(0.5)  # readline must own the terminal again, or the Ctrl-D byte is read in cooked mode and lost
    chat.type("\x04")  # Ctrl-D leaves
    assert chat.wait() == 0


@pytest.mark.slow
def test_chat_shows_progress_of_a_long_prompt(chat):
    chat.expect(">>> ")
    chat.type("/set max_tokens 1\n")
    chat.expect(r"\(max_tokens = 1\)")
    chat.type("Count the words: " + "apple banana cherry " * 120 + "\n")
    match = chat.expect(r"processing prompt: (\d+)/(\d+) tokens", timeout=180)
    assert 0 < int(match[1]) < int(match[2])
    chat.expect(">>> ", timeout=180)
    chat.type("/exit\n")
    assert chat.wait() == 0
