"""The command line: the `janlib` console script, also `python -m janlib`.

  serve   the Jan / OpenAI API server (the flags of python -m janlib.server)
  chat    interactive chat in the terminal, streamed
  run     one streamed answer to a prompt given as an argument and/or on stdin
  pull    download and verify a registry model, print its path
  list    registry models and whether they are cached
  info    a GGUF file's metadata summary
  bench   prompt processing (pp) and generation (tg) speed in tokens/s
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from janlib import registry
from janlib.fetch import fetch_model, is_cached, resolve_cache_dir

# The settings `chat` changes with `/set NAME VALUE`, and `chat` / `run` take as --NAME.
# Sampling defaults are SamplingParams' (the server's); max_tokens -1 runs to the end of the context.
SETTINGS = {
    "temperature": (float, "0 picks the most likely token (greedy)"),
    "top_k": (int, "keep the k most likely tokens (0: all)"),
    "top_p": (float, "keep the most likely tokens up to this probability mass"),
    "min_p": (float, "drop tokens less likely than min_p times the most likely one"),
    "repeat_penalty": (float, "penalty for tokens among the last 64 (1: none)"),
    "seed": (int, "random seed (-1: a new one for every answer)"),
    "max_tokens": (int, "longest answer in tokens (-1: until the context is full)"),
}

PREFILL_CHUNK = 256  # a prompt needing more new tokens than this is evaluated in chunks, with progress
_MAX_VALUE_CHARS = 80
_MAX_LIST_ITEMS = 8

CHAT_HELP = '''Commands:
  /set NAME VALUE    change a setting: {names}
  /set               show the settings and the system prompt
  /system TEXT       set the system prompt (/system alone removes it)
  /reset             forget the conversation (settings and system prompt stay); also /clear
  /exit              leave; also /bye or Ctrl-D
A line ending in \\ continues on the next line; \"\"\" opens a block that a line ending in \"\"\" closes.
Ctrl-C stops an answer and keeps what was written so far.'''.format(names=", ".join(SETTINGS))


# --- shared pieces ---------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """Sampling parameters and the answer length, checked the way the server checks a request."""

    sampling: Any  # janlib.SamplingParams
    max_tokens: int = -1

    def set(self, name: str, text: str, n_vocab: int) -> None:
        """Parse and validate one setting; raises ValueError naming it, leaving the settings unchanged."""
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        kind = SETTINGS[name][0]
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{name}: {text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if name == "max_tokens":
            if value < -1:
                raise ValueError("max_tokens: must be -1 (no limit) or at least 0")
            self.max_tokens = value
            return
        sampling = dataclasses.replace(self.sampling, **{name: value})
        sampling.validate(n_vocab)
        self.sampling = sampling

    def describe(self) -> str:
        return "  ".join(f"{name}={self.max_tokens if name == 'max_tokens' else getattr(self.sampling, name)}"
                         for name in SETTINGS)


@contextlib.contextmanager
def _ctrl_c_sets_flag() -> Iterator[threading.Event]:
    """While an answer is generated, Ctrl-C sets a flag that the token loop checks, rather than raising
    KeyboardInterrupt at an arbitrary point inside the model's bookkeeping."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _prefill_in_chunks(model, ids: list[int], stop: threading.Event, progress: Callable[[int, int], None]) -> None:
    """Evaluate what the model's cache lacks of a long prompt chunk by chunk, so progress can be shown
    and Ctrl-C stops between chunks. A zero-length generation evaluates its prompt and caches it; the
    final generate() then reuses the cached prefix."""
    start = _common_prefix(model.cached_tokens, ids)
    total = len(ids) - start
    if total <= PREFILL_CHUNK:
        return
    for end in range(start + PREFILL_CHUNK, len(ids), PREFILL_CHUNK):
        for _ in model.generate(ids[:end], max_tokens=0):
            pass
        progress(end - start, total)
        if stop.is_set():
            return


class _Status:
    """One status line on stderr (prompt progress), only when stderr is a terminal."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.shown = False

    def prompt_progress(self, done: int, total: int) -> None:
        if self.live:
            sys.stderr.write(f"\rprocessing prompt: {done}/{total} tokens ({100 * done // total}%)")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


@dataclasses.dataclass
class Answer:
    text: str
    stopped: bool  # Ctrl-C
    n_prompt: int
    n_new_prompt: int  # prompt tokens the cache did not hold
    prompt_seconds: float
    n_generated: int
    generate_seconds: float

    def stats(self) -> str:
        pp = self.n_new_prompt / self.prompt_seconds if self.prompt_seconds else 0.0
        tg = self.n_generated / self.generate_seconds if self.generate_seconds else 0.0
        return (f"prompt: {self.n_prompt} tokens ({self.n_prompt - self.n_new_prompt} cached), {pp:.1f} tokens/s; "
                f"answer: {self.n_generated} tokens, {tg:.1f} tokens/s")


def stream_answer(model, messages: list[dict], settings: Settings, out: TextIO) -> Answer:
    """Write the assistant's answer to messages onto out as it is generated; Ctrl-C ends it early."""
    status = _Status()
    max_tokens = model.n_ctx if settings.max_tokens == -1 else settings.max_tokens
    pieces: list[str] = []
    n_generated = 0
    with _ctrl_c_sets_flag() as stop:
        started = time.perf_counter()
        _, ids = model.chat_prompt(messages)
        n_new = len(ids) - _common_prefix(model.cached_tokens, ids)
        try:
            _prefill_in_chunks(model, ids, stop, status.prompt_progress)
        finally:
            status.clear()
        prompt_done = generate_done = time.perf_counter()
        if not stop.is_set():
            generation = model.generate(ids, max_tokens=max_tokens, sampling=settings.sampling)
            prompt_done = time.perf_counter()
            for token in generation:
                if token.id is not None:
                    n_generated += 1
                if token.text:
                    pieces.append(token.text)
                    out.write(token.text)
                    out.flush()
                if stop.is_set():
                    break
            generate_done = time.perf_counter()
    return Answer("".join(pieces), stop.is_set(), len(ids), n_new, prompt_done - started, n_generated,
                  generate_done - prompt_done)


def _load_model(args: argparse.Namespace):
    from janlib import Model

    return Model(args.model, n_ctx=args.ctx_size, n_threads=args.threads)


def _settings(args: argparse.Namespace, n_vocab: int) -> Settings:
    from janlib import SamplingParams

    settings = Settings(SamplingParams())
    for name in SETTINGS:
        value = getattr(args, name)
        if value is not None:
            settings.set(name, str(value), n_vocab)
    return settings


def _messages(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


# --- run -------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    prompt = args.prompt or ""
    if not sys.stdin.isatty():
        piped = sys.stdin.read().rstrip("\n")  # `echo TEXT | janlib run` asks just what `janlib run TEXT` asks
        prompt = f"{prompt}\n\n{piped}" if prompt else piped
    if not prompt.strip():
        raise ValueError("no prompt: give it as an argument or on stdin (janlib chat talks interactively)")
    model = _load_model(args)
    settings = _settings(args, model.n_vocab)
    answer = stream_answer(model, _messages(args.system, [{"role": "user", "content": prompt}]), settings,
                           sys.stdout)
    if not answer.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if args.verbose:
        print(answer.stats(), file=sys.stderr)
    return 130 if answer.stopped else 0


# --- chat ------------------------------------------------------------------------


def _read_line(prompt: str) -> str:
    """A line of input without its newline; EOFError at the end. Prompts only on a terminal."""
    if sys.stdin.isatty():
        return input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def read_message(read_line: Callable[[str], str] = _read_line) -> str:
    """One message: a line; a line ending in a backslash continues on the next (as llama.cpp's CLI);
    a line starting with \"\"\" opens a block that the next line ending in \"\"\" closes (as ollama).
    EOFError when the input ends before a message starts."""
    line = read_line(">>> ")
    if line.lstrip().startswith('"""'):
        first = line.lstrip()[3:]
        if first.rstrip().endswith('"""'):
            return first.rstrip()[:-3]
        lines = [first] if first else []
        while True:
            try:
                line = read_line("... ")
            except EOFError:
                break
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                break
            lines.append(line)
        return "\n".join(lines).strip("\n")
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = read_line("... ")
        except EOFError:
            line = ""
    lines.append(line)
    return "\n".join(lines)


class ChatSession:
    def __init__(self, model, settings: Settings, system: str | None, verbose: bool) -> None:
        self.model = model
        self.settings = settings
        self.system = system
        self.verbose = verbose
        self.turns: list[dict] = []

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def command(self, line: str) -> bool:
        """Carry out a /command; False means leave."""
        name, _, rest = line[1:].strip().partition(" ")
        rest = rest.strip()
        if name in ("exit", "bye", "quit"):
            return False
        if name in ("reset", "clear"):
            self.turns.clear()
            self.model.reset()
            self.say("(conversation cleared)")
        elif name == "system":
            self.system = rest or None
            self.say("(system prompt set)" if rest else "(system prompt removed)")
        elif name == "set" and not rest:
            self.say(self.settings.describe())
            self.say(f"system: {self.system!r}")
        elif name == "set":
            setting, _, value = rest.partition(" ")
            try:
                self.settings.set(setting, value.strip(), self.model.n_vocab)
            except ValueError as error:
                self.say(f"error: {error}")
            else:
                self.say(f"({setting} = {value.strip()})")
        elif name in ("help", "?"):
            self.say(CHAT_HELP)
        else:
            self.say(f"unknown command /{name}: /help lists them")
        return True

    def fit_context(self) -> bool:
        """Drop the oldest exchanges until the conversation's prompt leaves room in the context."""
        dropped = 0
        while len(self.model.chat_prompt(_messages(self.system, self.turns))[1]) >= self.model.n_ctx:
            if len(self.turns) <= 1:
                self.turns.clear()
                self.say(f"error: the message does not fit in the context ({self.model.n_ctx} tokens)")
                return False
            del self.turns[:2]
            dropped += 2
        if dropped:
            self.say(f"(the context is full: dropped the oldest {dropped} messages)")
        return True

    def ask(self, text: str) -> None:
        self.turns.append({"role": "user", "content": text})
        if not self.fit_context():
            return
        answer = stream_answer(self.model, _messages(self.system, self.turns), self.settings, sys.stdout)
        # An interrupted answer stays in the conversation, as far as it went (as llama-server's web UI).
        self.turns.append({"role": "assistant", "content": answer.text})
        print(flush=True)
        if answer.stopped:
            self.say("(stopped)")
        if self.verbose:
            self.say(answer.stats())

    def loop(self) -> None:
        while True:
            try:
                text = read_message()
            except EOFError:
                break
            except KeyboardInterrupt:
                self.say("\n(Ctrl-D or /exit to leave)")
                continue
            try:
                if text.startswith("/"):
                    if not self.command(text):
                        break
                elif text.strip():
                    self.ask(text)
            except KeyboardInterrupt:  # outside an answer's generation, e.g. while the model is reset
                self.say("\n(stopped)")


def _chat(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        import readline  # noqa: F401  line editing and history for input()
    model = _load_model(args)
    session = ChatSession(model, _settings(args, model.n_vocab), args.system, args.verbose)
    session.say(f"janlib chat: {model.path.name} (context {model.n_ctx} tokens). /help for commands, "
                'Ctrl-D or /exit to leave, """ for multi-line input.')
    session.loop()
    return 0


# --- pull, list, info ----------------------------------------------------------------


def _pull(args: argparse.Namespace) -> int:
    print(fetch_model(args.name, cache_dir=args.cache_dir))
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = [("NAME", "SIZE", "ARCH", "CACHED", "DESCRIPTION")]
    for entry in registry.REGISTRY.values():
        default = " (default)" if entry.name == registry.DEFAULT_MODEL else ""
        rows.append((
            entry.name,
            f"{entry.size / 1e6:.1f} MB",
            entry.arch,
            "yes" if is_cached(entry, args.cache_dir) else "no",
            entry.description + default,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for *cells, last in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + last)
    print(f"cache: {resolve_cache_dir(args.cache_dir)}")
    return 0


def _format_value(value: Any) -> str:
    if isinstance(value, list) and len(value) > _MAX_LIST_ITEMS:
        return f"[{len(value)} items]"
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def gguf_summary(path: Path, gguf) -> list[tuple[str, str]]:
    """(label, value) rows describing an open GGUFFile."""
    meta = gguf.metadata
    arch = meta.get("general.architecture", "?")
    n_params = sum(t.n_elements for t in gguf.tensors.values())
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for tensor in gguf.tensors.values():
        counts[tensor.qtype] += 1
        sizes[tensor.qtype] += tensor.nbytes
    n_bytes = sum(sizes.values())
    tokens = meta.get("tokenizer.ggml.tokens")
    template = meta.get("tokenizer.chat_template")

    def hparam(key: str) -> str:
        return str(meta.get(f"{arch}.{key}", "?"))

    return [
        ("path", str(path)),
        ("name", str(meta.get("general.name", path.stem))),
        ("architecture", str(arch)),
        ("parameters", _count(n_params)),
        ("tensor data", f"{_mib(n_bytes)}, {8 * n_bytes / max(n_params, 1):.2f} bits per weight"),
        ("quant types", ", ".join(f"{qtype} ({counts[qtype]} tensors, {_mib(sizes[qtype])})"
                                  for qtype, _ in sizes.most_common())),
        ("context length", hparam("context_length")),
        ("layers", f"{hparam('block_count')}, embedding {hparam('embedding_length')}, "
                   f"heads {hparam('attention.head_count')} (KV {hparam('attention.head_count_kv')})"),
        ("vocab", f"{len(tokens) if tokens is not None else '?'} tokens, "
                  f"{meta.get('tokenizer.ggml.model', '?')} tokenizer"),
        ("chat template", f"yes ({len(template)} characters)" if template else "no"),
    ]  # fmt: skip


def _info(args: argparse.Namespace) -> int:
    from janlib.gguf import load_gguf

    path = fetch_model(args.name_or_path, cache_dir=args.cache_dir)
    with load_gguf(path) as gguf:
        rows = gguf_summary(path, gguf)
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label.ljust(width)}  {value}")
        if args.metadata:
            print(f"metadata ({len(gguf.metadata)} keys):")
            for key, value in gguf.metadata.items():
                print(f"  {key} = {_format_value(value)}")
    return 0


# --- bench -------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

    from janlib import Model, _core

    if args.n_prompt < 1 or args.n_gen < 1 or args.repetitions < 1:
        raise ValueError("--n-prompt, --n-gen and --repetitions must be at least 1")
    model = Model(args.model, n_ctx=args.n_prompt + args.n_gen + 1, n_threads=args.threads)
    # Random tokens, as llama-bench: the speed does not depend on the text.
    ids = [int(i) for i in np.random.default_rng(0).integers(100, min(model.n_vocab, 30000), args.n_prompt)]

    def prompt_processing() -> float:
        model.reset()
        start = time.perf_counter()
        for _ in model.generate(ids, max_tokens=0):
            pass
        return args.n_prompt / (time.perf_counter() - start)

    def generation() -> float:
        # Greedy from a one-token prompt; each token after the first costs one forward pass.
        model.reset()
        tokens = model.generate(ids[:1], max_tokens=args.n_gen + 1, ignore_eos=True)
        start = time.perf_counter()
        for _ in tokens:
            pass
        return args.n_gen / (time.perf_counter() - start)

    size = model.path.stat().st_size
    rows = [("model", "size", "threads", "test", "tokens/s")]
    for test, measure in ((f"pp{args.n_prompt}", prompt_processing), (f"tg{args.n_gen}", generation)):
        measure()  # warm-up
        rates = [measure() for _ in range(args.repetitions)]
        spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
        rows.append((model.path.name, _mib(size), str(args.threads or _core.default_threads()), test,
                     f"{statistics.mean(rates):.2f} ± {spread:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return 0


# --- the parser ----------------------------------------------------------------------


def build_parser(prog: str = "janlib") -> argparse.ArgumentParser:
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-dir", help="model cache (default: $JANLIB_CACHE, else $XDG_CACHE_HOME/janlib, "
                       "else ~/.cache/janlib)")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("-m", "--model", help=f"registry name or path of a .gguf file (default {registry.DEFAULT_MODEL})")
    model.add_argument("-t", "--threads", type=int, help="compute threads (default: the physical cores)")

    talk = argparse.ArgumentParser(add_help=False, parents=[model])
    talk.add_argument("-c", "--ctx-size", type=int, help="context size in tokens (default: the model's, at most 4096)")
    talk.add_argument("-s", "--system", help="system prompt")
    talk.add_argument("-v", "--verbose", action="store_true", help="print token counts and speed after each answer")
    sampling = talk.add_argument_group("sampling (defaults as the server's; in chat, /set NAME VALUE)")
    for name, (kind, text) in SETTINGS.items():
        sampling.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, metavar=name.upper(), help=text)

    parser = argparse.ArgumentParser(prog=prog, description="janlib: fast local LLM inference",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"'{prog} COMMAND --help' describes a command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # `serve` is dispatched before parsing (main), so that its flags stay the server's own.
    commands.add_parser("serve", add_help=False, help="serve a model over the Jan / OpenAI API (127.0.0.1:1337)")

    chat = commands.add_parser("chat", parents=[talk], help="chat in the terminal, streamed",
                               description="Chat in the terminal; answers stream as they are generated.",
                               epilog=CHAT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.set_defaults(handler=_chat)

    run = commands.add_parser("run", parents=[talk], help="answer one prompt (an argument and/or stdin), streamed",
                              description="Answer one prompt through the model's chat template. Piped stdin "
                              "is read too: it follows the argument after a blank line. Ctrl-C stops (exit 130).")
    run.add_argument("prompt", nargs="?", help="the prompt (optional when stdin is piped)")
    run.set_defaults(handler=_run)

    pull = commands.add_parser("pull", parents=[cache], help="download and verify a registry model, print its path")
    pull.add_argument("name", help=f"registry name, e.g. {registry.DEFAULT_MODEL}")
    pull.set_defaults(handler=_pull)

    listing = commands.add_parser("list", parents=[cache], help="list registry models and whether they are cached")
    listing.set_defaults(handler=_list)

    info = commands.add_parser("info", parents=[cache], help="summarize a GGUF file (pulls registry models first)")
    info.add_argument("name_or_path", nargs="?", default=registry.DEFAULT_MODEL,
                      help=f"registry name or path of a .gguf file (default {registry.DEFAULT_MODEL})")
    info.add_argument("--metadata", action="store_true", help="also list every metadata key")
    info.set_defaults(handler=_info)

    bench = commands.add_parser("bench", parents=[model], help="prompt processing and generation speed, tokens/s",
                                description="pp: one prompt of N random tokens from an empty context; tg: N "
                                "tokens generated greedily (sampling included), one forward pass each.")
    bench.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default 512)")
    bench.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default 128)")
    bench.add_argument("-r", "--repetitions", type=int, default=3, help="measured runs after a warm-up (default 3)")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "janlib") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from janlib.server.__main__ import main as serve

        return serve(argv[1:], prog=f"{prog} serve")
    args = build_parser(prog).parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # a CLI reports failures, it does not dump tracebacks
        print(f"janlib: error: {str(error) or type(error).__name__}", file=sys.stderr)
        return 1
