"""Model: load a GGUF, tokenize, run the forward pass, generate and chat.

Tokens are chosen by the C sampler chain (janlib.sampling); without SamplingParams, greedily."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from janlib.chat import ChatTemplate
from janlib.context import BatchContext
from janlib.embedding import Embedder, as_token_lists
from janlib.fetch import fetch_model
from janlib.gguf import load_gguf
from janlib.lora import LoraAdapter, LoraSelection, load_adapter, resolve_scales
from janlib.media import EmbeddingCache, MediaPrompt, build_media_prompt, image_parts_to_markers
from janlib.models import load_runtime
from janlib.registry import DEFAULT_MODEL
from janlib.sampling import Sampler, SamplingParams, TokenProbs
from janlib.stop import IndentLimit, StopStringFilter
from janlib.structured import Constraint
from janlib.tokenizer import Tokenizer


# greedy and nothing else: no repetition penalty
GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


@dataclass(frozen=True)
class GeneratedToken:
    id: int | None  # None for the text still held back when generation ends
    text: str  # the text this token releases: "" while a UTF-8 character or stop string is pending
    probs: TokenProbs | None = None  # the top n_probs of this draw, when SamplingParams.n_probs > 0


class Generation(Iterator[GeneratedToken]):
    """The tokens of one generation; finish_reason is "stop" or "length" once it is exhausted."""

    def __init__(self, tokens: Iterator[GeneratedToken], n_prompt: int, n_cached: int):
        self._tokens = tokens
        self.n_prompt_tokens = n_prompt
        self.n_cached_tokens = n_cached
        self.finish_reason: str | None = None
        self.truncated = False  # a context shift dropped tokens from the middle of the context

    def __next__(self) -> GeneratedToken:
        return next(self._tokens)


class Model:
    def __init__(self, path_or_name: str | None = None, n_ctx: int | None = None, n_threads: int | None = None,
                 kv_type: str = "f16", kv_type_v: str | None = None,
                 lora: Sequence[str | tuple[str, float]] = (), mmproj: str | None = None):
        """lora: LoRA adapter files (or (file, default scale) pairs) to load, as load_lora; mmproj: a
        llama.cpp multimodal projector GGUF for the model, which lets prompts hold images (media_prompt)."""
        self.path = fetch_model(path_or_name or DEFAULT_MODEL)
        self._file = load_gguf(self.path)
        self.metadata = self._file.metadata
        self.tokenizer = Tokenizer.from_metadata(self.metadata)
        self.template = ChatTemplate.from_metadata(self.metadata, self.tokenizer)
        self._runtime = load_runtime(self._file, n_ctx=n_ctx, kv_type=kv_type, n_threads=n_threads, kv_type_v=kv_type_v)
        self._cached: list[int] = []  # the tokens whose keys and values the context holds
        self._token_bytes: list[bytes] | None = None  # every token's text, built once for DRY
        self.adapters: list[LoraAdapter] = []
        self._cached_scales: tuple[float, ...] = ()  # the adapter scales the cached tokens were evaluated with
        for entry in lora:
            path, scale = (entry, 1.0) if isinstance(entry, (str, bytes)) or hasattr(entry, "__fspath__") else entry
            self.load_lora(path, scale)
        self._embedder: Embedder | None = None
        self.projector = None
        self._media_cache = EmbeddingCache()
        if mmproj is not None:
            self.load_projector(mmproj)

    @property
    def n_ctx(self) -> int:
        return self._runtime.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._runtime.n_vocab

    @property
    def n_embd(self) -> int:
        return self._runtime.hparams.n_embd

    @property
    def is_encoder(self) -> bool:
        """An embedding model (bert, nomic-bert): it has no output head, so it gives embeddings, not text."""
        return self._runtime.hparams.non_causal

    @property
    def embedder(self) -> Embedder:
        """The embeddings of this model (its own context, created on first use)."""
        if self._embedder is None:
            self._embedder = Embedder(self._runtime)
        return self._embedder

    def embed(self, inputs: str | Sequence[int] | Sequence[str | Sequence[int]], pooling: str | None = None,
              normalize: int = 2) -> np.ndarray | list[np.ndarray]:
        """Embeddings of a text or a token list, (n_embd,) float32, or of a list of them, (n, n_embd);
        all inputs run in as few forward passes as fit. pooling: "mean", "cls", "last" or "none"
        (then one (n_tokens, n_embd) array per input); None: the model's (the file's pooling_type,
        "last" for a decoder). normalize: as llama.cpp's embd_normalize (2: unit length, -1: none).
        Texts are tokenized with the model's special tokens (bert: [CLS] ... [SEP])."""
        token_lists, single = as_token_lists(inputs, self.tokenize)
        vectors = self.embedder.embed(token_lists, pooling, normalize)
        return vectors[0] if single else vectors

    @property
    def chat_template(self) -> str | None:
        return None if self.template.is_fallback else self.template.source

    @property
    def cached_tokens(self) -> tuple[int, ...]:
        """The tokens the context holds, which the next prompt's common prefix reuses."""
        return tuple(self._cached)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.tokenizer.eos_token_ids

    def load_lora(self, path, scale: float = 1.0) -> LoraAdapter:
        """Load a llama.cpp LoRA GGUF for this model (checked against its architecture and shapes);
        its id is its index in self.adapters, scale its default (what a selection does not override)."""
        adapter = load_adapter(path, self._runtime, len(self.adapters), scale)
        self.adapters.append(adapter)
        return adapter

    def load_projector(self, path) -> None:
        """Load a llama.cpp multimodal projector GGUF (mmproj) for this model, checked against it (ValueError
        naming a mismatch; GGUFError / UnsupportedError for a file janlib cannot run): prompts may then hold
        images (media_prompt)."""
        from janlib.vision import load_projector  # Pillow and the vision tower load only with a projector

        projector = load_projector(path, n_threads=self._runtime.n_threads)
        try:
            projector.check_text_model(self)
        except ValueError:
            projector.close()
            raise
        self.projector = projector
        self._media_cache = EmbeddingCache()

    def lora_scales(self, lora: LoraSelection = None) -> tuple[float, ...]:
        """Every adapter's scale under the selection lora ({id or adapter: scale}, or the API's
        [{"id": N, "scale": S}]): the named adapters as given, the others at their default scale."""
        return resolve_scales(self.adapters, lora)

    def _eval(self, ids, pos0: int, scales: tuple[float, ...], media: MediaPrompt | None = None) -> np.ndarray:
        """The last row's logits of ids at pos0.. with the adapters at scales; ids are media's positions
        pos0.. when it is given (its images' rows take their embeddings)."""
        embd = blocks = None
        if media is not None:
            ids, embd, blocks, _ = media.rows(pos0, pos0 + len(ids), 0)
        return self._runtime.eval(ids, pos0, "last", tuple(self.adapters), scales, embd, blocks)[0]

    def media_prompt(self, text: str, images: Sequence[bytes], fields: Sequence[str] | None = None,
                     add_special: bool = True, parse_special: bool = True) -> MediaPrompt:
        """A prompt with images for logits, generate and Engine requests: each image (encoded bytes: PNG,
        JPEG, WebP, GIF) goes where a <__media__> marker is in text, laid out as llama.cpp's mtmd lays it for
        the projector (its text pieces and embeddings). The markers and images must match in number
        (ValueError); bad image data raises janlib.errors.InvalidMediaError naming fields[i] (default
        "images[i]"). The first text gets the special tokens (BOS) with add_special; special tokens in the
        text are parsed with parse_special. An image seen recently is not encoded again."""
        if self.projector is None:
            raise ValueError("this model has no multimodal projector (load it with mmproj=...): it cannot take images")
        return build_media_prompt(text, images, self.projector, self.tokenize, self._media_cache, fields,
                                  add_special, parse_special)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def reset(self) -> None:
        """Forget the cached context: the next prompt is evaluated from its first token."""
        self._runtime.seq_rm(0)
        self._cached = []

    def create_context(self, n_ctx: int = 2048, n_seq_max: int = 4, n_cells: int | None = None, kv_type: str = "f16",
                       n_batch: int = 512, kv_type_v: str | None = None, swa_full: bool = False) -> BatchContext:
        """A KV cache for n_seq_max sequences of at most n_ctx positions each, sharing n_cells cells
        (default n_ctx * n_seq_max) and this model's weights: see janlib.BatchContext."""
        return BatchContext(self._runtime, n_ctx=n_ctx, n_seq_max=n_seq_max, n_cells=n_cells, kv_type=kv_type,
                            n_batch=n_batch, n_threads=self._runtime.n_threads, kv_type_v=kv_type_v, swa_full=swa_full)

    def sampler(self, sampling: SamplingParams | None = None, ignore_eos: bool = False) -> Sampler:
        """The sampler chain for one generation (validated against this vocabulary)."""
        params = sampling or GREEDY
        if ignore_eos and not params.ignore_eos:
            params = dataclasses.replace(params, ignore_eos=True)
        token_bytes = None
        if params.dry_multiplier != 0:
            if self._token_bytes is None:
                self._token_bytes = [self.tokenizer.token_bytes(i) for i in range(self.n_vocab)]
            token_bytes = self._token_bytes
        return Sampler(params, self.n_vocab, self.eos_token_ids, token_bytes, n_ctx=self.n_ctx)

    def logits(self, ids: Sequence[int] | MediaPrompt, lora: LoraSelection = None) -> np.ndarray:
        """float32 (n_vocab,) next-token logits after ids (token ids or a media_prompt), from a fresh
        context; lora selects adapter scales (see lora_scales)."""
        scales = self.lora_scales(lora)
        media, ids = _split_media(ids)
        self._check_prompt(ids)
        self._runtime.seq_rm(0)
        self._cached = []
        out = self._eval(ids, 0, scales, media)
        self._cached, self._cached_scales = list(ids), scales
        return out

    def _check_prompt(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            raise ValueError("the prompt is empty: at least one token is needed")
        if len(ids) > self.n_ctx:
            raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx}")

    def _prefill(self, ids: Sequence[int], scales: tuple[float, ...],
                 media: MediaPrompt | None = None) -> tuple[np.ndarray, int]:
        """Evaluate ids, reusing the cached common prefix (evaluated with the same adapter scales);
        returns the last logits and the reused count."""
        reuse = 0
        cached = self._cached if scales == self._cached_scales else []
        for a, b in zip(cached, ids):
            if a != b:
                break
            reuse += 1
        reuse = min(reuse, len(ids) - 1)  # the last prompt token is always evaluated, for its logits
        if reuse < self._runtime.cut_min():  # sliding-window layers gave back that prefix's window
            reuse = 0
        self._runtime.seq_rm(reuse)
        self._cached = self._cached[:reuse]
        logits = self._eval(ids[reuse:], reuse, scales, media)
        self._cached, self._cached_scales = list(ids), scales
        return logits, reuse

    def generate(self, ids: Sequence[int] | MediaPrompt, max_tokens: int = 256, stop: str | Sequence[str] | None = None,
                 ignore_eos: bool = False, sampling: SamplingParams | None = None,
                 context_shift: bool = False, n_keep: int = 0, n_indent: int = 0,
                 grammar: str | None = None, json_schema: dict | str | None = None,
                 constraint: Constraint | None = None, lora: LoraSelection = None) -> Generation:
        """Continuation of ids, greedy unless sampling is given: an iterator of GeneratedToken ending
        at an end-of-generation token, a stop string (whose text is never released), max_tokens or
        the end of the context, or (n_indent > 0) a line indented by fewer than n_indent
        spaces or tabs after the first newline, as llama.cpp does. With context_shift, a full context instead drops half of what
        follows the first n_keep tokens (-1: the whole prompt; a leading BOS is always kept), as
        llama.cpp does, and generation goes on. grammar (llama.cpp GBNF), json_schema or a ready
        constraint (janlib.structured.Constraint, used for this one generation) restricts every token
        to the grammar; generation then stops (finish_reason "stop") when the grammar is complete,
        and a grammar that cannot be compiled raises GrammarError. lora selects the LoRA adapters'
        scales for this generation (see lora_scales). ids may be a media_prompt (images): its image
        positions are reused from the cache like tokens when the same image comes again; such a
        prompt does not shift the context (as llama-server with a projector)."""
        media, ids = _split_media(ids)
        ids = [int(i) for i in ids]
        scales = self.lora_scales(lora)
        self._check_prompt(ids)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be a non-negative int, got {max_tokens!r}")
        if isinstance(n_keep, bool) or not isinstance(n_keep, int) or n_keep < -1:
            raise ValueError(f"n_keep must be an int >= -1, got {n_keep!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        constraint = self._constraint(grammar, json_schema, constraint)
        sampler = self.sampler(sampling, ignore_eos)
        sampler.accept_prompt(media.text_tokens if media is not None else ids)
        logits, reused = self._prefill(ids, scales, media)
        generation = Generation(iter(()), len(ids), reused)
        keep = None
        if context_shift and media is None:
            keep = len(ids) if n_keep == -1 else n_keep
            if n_keep != -1 and ids[0] == self.tokenizer.bos_id:
                keep += 1  # the BOS token is never shifted out (llama.cpp adds it to n_keep)
        filters = (StopStringFilter(stops), IndentLimit(n_indent))
        generation._tokens = self._decode_loop(generation, logits, max_tokens, filters, sampler, keep, constraint,
                                               scales)
        return generation

    def _constraint(self, grammar, json_schema, constraint) -> Constraint | None:
        given = [name for name, v in (("grammar", grammar), ("json_schema", json_schema),
                                      ("constraint", constraint)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of grammar, json_schema and constraint, got {', '.join(given)}")
        if grammar is not None:
            return Constraint.from_gbnf(grammar, self)
        if json_schema is not None:
            return Constraint.from_json_schema(json_schema, self)
        return constraint

    def _shift_context(self, keep: int, scales: tuple[float, ...]) -> bool:
        """Drop half of the cached tokens after the first keep; False when nothing can go."""
        keep = min(keep, len(self._cached))
        n_discard = (len(self._cached) - keep) // 2
        if n_discard <= 0:
            return False
        if self._runtime.can_shift(keep, n_discard):
            self._runtime.shift(keep, n_discard)
            del self._cached[keep:keep + n_discard]
        else:  # sliding-window layers gave back kept positions the new window sees: recompute
            kept = self._cached[:keep] + self._cached[keep + n_discard:]
            self._runtime.seq_rm(0)
            self._cached = []
            self._eval(kept, 0, scales)
            self._cached = kept
        return True

    def _decode_loop(self, generation: Generation, logits: np.ndarray, max_tokens: int,
                     filters: tuple[StopStringFilter, IndentLimit], sampler: Sampler,
                     keep: int | None, constraint: Constraint | None = None,
                     scales: tuple[float, ...] = ()) -> Iterator[GeneratedToken]:
        decoder = self.tokenizer.decoder()
        stops, indent = filters
        eos = self.eos_token_ids
        with_probs = sampler.params.n_probs > 0
        token = None
        for _ in range(max_tokens):
            if token is not None:  # evaluate the previous token only when another one is wanted
                if len(self._cached) >= self.n_ctx:
                    if keep is None or not self._shift_context(keep, scales):
                        break
                    generation.truncated = True
                logits = self._eval([token], len(self._cached), scales)
                self._cached.append(token)
            token = sampler.sample(logits, constraint)
            if token in eos:
                generation.finish_reason = "stop"
                break
            probs = sampler.last_probs() if with_probs else None
            yield GeneratedToken(token, indent.feed(stops.feed(decoder.feed(token))), probs)
            if stops.stopped or indent.stopped:
                generation.finish_reason = "stop" if stops.stopped else "length"
                return
            if constraint is not None and constraint.is_stopped():
                generation.finish_reason = "stop"  # the grammar is complete: nothing more can follow
                break
        generation.finish_reason = generation.finish_reason or "length"
        tail = indent.feed(stops.feed(decoder.flush()) + stops.flush()) + indent.flush()
        if tail:
            yield GeneratedToken(None, tail)

    def chat_prompt(self, messages: list[dict], images: Sequence[bytes] = (), image_fields: Sequence[str] | None = None,
                    **render_options) -> tuple[str, list[int] | MediaPrompt]:
        """The rendered chat prompt for messages, ready for the assistant's turn, and its tokens;
        render_options go to ChatTemplate.render (tools, continue_final_message, template variables).
        With images (their <__media__> markers in the messages' text), a MediaPrompt instead of tokens."""
        prompt = self.template.render(messages, **{"add_generation_prompt": True, **render_options})
        add_special = self.chat_add_special(prompt)
        if images:
            return prompt, self.media_prompt(prompt, images, image_fields, add_special=add_special)
        return prompt, self.tokenize(prompt, add_special=add_special, parse_special=True)

    def chat_add_special(self, prompt: str) -> bool:
        """Whether a rendered chat prompt gets the special tokens (BOS): not when the template wrote the BOS
        text itself (Gemma's), which must not come twice."""
        bos_text = self.tokenizer.token_text(self.tokenizer.bos_id) if self.tokenizer.bos_id is not None else None
        return not (bos_text and prompt.startswith(bos_text))

    def chat(self, messages: list[dict], max_tokens: int = 256, stream: bool = False,
             stop: str | Sequence[str] | None = None, ignore_eos: bool = False,
             sampling: SamplingParams | None = None, grammar: str | None = None,
             json_schema: dict | str | None = None, constraint: Constraint | None = None,
             lora: LoraSelection = None):
        """The assistant's answer to messages (rendered with the model's chat template), or with
        stream=True an iterator of its text pieces. A message's content parts may hold images, as OpenAI's
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} (a model with a projector)."""
        messages, images, fields = image_parts_to_markers(messages)
        _, ids = self.chat_prompt(messages, images, fields)
        generation = self.generate(ids, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos, sampling=sampling,
                                   grammar=grammar, json_schema=json_schema, constraint=constraint, lora=lora)
        pieces = (t.text for t in generation if t.text)
        return pieces if stream else "".join(pieces)


def _split_media(ids: Sequence[int] | MediaPrompt) -> tuple[MediaPrompt | None, Sequence[int]]:
    """(the media prompt or None, the prompt's position ids)."""
    return (ids, ids.tokens) if isinstance(ids, MediaPrompt) else (None, ids)
