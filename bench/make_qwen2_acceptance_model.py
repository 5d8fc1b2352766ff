"""Build a Qwen2 Q4_K_M GGUF at Qwen2.5-0.5B-Instruct's exact shapes with random weights, for the
prompt-processing benchmark on a qwen2 model outside janlib's registry (JANLIB_BENCH_GGUF in
test_model_bench.py). Speed depends on the shapes and quantization types, not on the weight values.

    pip install torch transformers tokenizers        # tools for this script, not janlib dependencies
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36   # and unpack it
    cmake --build BUILD --target llama-quantize      # from that sdist's vendor/llama.cpp
    python bench/make_qwen2_acceptance_model.py OUT_DIR LLAMA_CPP_DIR LLAMA_QUANTIZE

LLAMA_CPP_DIR is the sdist's vendor/llama.cpp (its convert_hf_to_gguf.py and gguf-py), LLAMA_QUANTIZE
the llama-quantize binary built from it. Writes OUT_DIR/hf (the transformers model, fp16 safetensors),
OUT_DIR/qwen2-0.5b-random-f16.gguf (llama.cpp's converter) and OUT_DIR/qwen2-0.5b-random-q4_k_m.gguf
(llama-quantize Q4_K_M). The tokenizer is the tests' tiny byte-level BPE; the converter pads the
vocabulary to the config's 151936 entries, so the embedding and output matrices keep Qwen's shape.
Hidden size 896 is not a multiple of the K-quant block (256), so llama-quantize stores every matrix
whose rows are 896 long in its fallback types (Q5_0 for Q4_K, Q8_0 for Q6_K, the tied embedding
included); only ffn_down (rows of 4864) is Q4_K/Q6_K. The types follow from the shapes and names
alone, so the real model's weights would get the same mix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
from make_arch_fixtures import convert, train_tokenizer  # noqa: E402  (the fixtures' tokenizer and converter call)

# Qwen2.5-0.5B-Instruct's config.json, minus the token ids (the tiny tokenizer's <s> and </s>)
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True,
                  max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", initializer_range=0.02,
                  bos_token_id=0, eos_token_id=1)


def build_hf_model(directory: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(**QWEN25_05B)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 or "bias" in name:  # matrices and the q/k/v biases; norms keep their ones
                p.normal_(0.0, QWEN25_05B["initializer_range"])
    model.half().save_pretrained(directory, safe_serialization=True)
    train_tokenizer(directory)


def main() -> None:
    out, llama_cpp, quantize = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    hf_dir, f16 = out / "hf", out / "qwen2-0.5b-random-f16.gguf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    build_hf_model(hf_dir)
    convert(llama_cpp, hf_dir, f16, "f16", {})
    subprocess.run([quantize, str(f16), str(out / "qwen2-0.5b-random-q4_k_m.gguf"), "Q4_K_M"], check=True)


if __name__ == "__main__":
    main()
