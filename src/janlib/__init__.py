"""janlib: fast local LLM inference — GGUF models on SIMD C kernels."""

from janlib.context import BatchContext
from janlib.errors import InvalidMediaError, JanlibError, KVCacheFull, UnsupportedError
from janlib.gguf import GGUFError, GGUFFile, GGUFTensor, load_gguf
from janlib.kernels import cpu_features, dequantize, matmul, set_isa, set_n_threads, use_isa
from janlib.fetch import fetch_model
from janlib.engine import Engine, Event, Handle, Request, Result
from janlib.media import MediaPrompt
from janlib.model import GeneratedToken, Generation, Model
from janlib.sampling import Sampler, SamplingParams, SamplingParamsError

__version__ = "0.1.0"

__all__ = [
    "BatchContext",
    "Engine",
    "Event",
    "GGUFError",
    "GGUFFile",
    "GGUFTensor",
    "GeneratedToken",
    "Handle",
    "Generation",
    "InvalidMediaError",
    "JanlibError",
    "KVCacheFull",
    "MediaPrompt",
    "Model",
    "Request",
    "Result",
    "Sampler",
    "SamplingParams",
    "SamplingParamsError",
    "UnsupportedError",
    "cpu_features",
    "dequantize",
    "fetch_model",
    "load_gguf",
    "matmul",
    "set_isa",
    "set_n_threads",
    "use_isa",
]
